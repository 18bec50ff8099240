"""Helper-model predictors on real models: a tiny helper trained here, SmolLM2 (refused: it is the target), a random
model with another tokenizer (mapped), and bad helper paths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictors import PredictorContext, create, densify, view
from predictors.model import HelperError, helper_logprobs, load_helper


@pytest.fixture(scope="module")
def ctx(tiny_suite):
    return PredictorContext.from_suite(tiny_suite)


@pytest.fixture(scope="module")
def prompts(tiny_suite):
    return [view(p) for s in ("practice", "sealed") for p in tiny_suite.prompts(s)]


def test_predictions_are_the_helpers_softmax_smoothed_by_the_rest_rule(ctx, prompts, tiny_helper):
    import torch

    p = create("tiny-helper", ctx, allow_unapproved=True, cache=False, smoothing=1e-3)
    assert p.same_tokenizer and p.max_context == 32  # trained on 32-token windows: prompts are cut to that
    q = p.distributions(prompts)
    model = load_helper(tiny_helper).model
    for i in (0, 5, 11):  # reference: one unbatched forward pass of the full model on the last 32 tokens
        with torch.inference_mode():
            logits = model(torch.tensor([list(prompts[i].token_ids[-32:])])).logits[0, -1]
        ref = torch.softmax(logits.double(), -1).numpy()[: ctx.vocab_size]
        want = 0.999 * ref / ref.sum() + 1e-3 * ctx.background
        assert np.allclose(q[i], want, rtol=1e-4, atol=1e-9)
    for pred in p.predict(prompts[:3]):  # the format's validator accepts them unchanged
        assert np.allclose(densify(pred, ctx.vocabulary, ctx.background), q[prompts.index(
            next(x for x in prompts if x.id == pred.prompt_id))])


def test_batched_equals_one_at_a_time(prompts, tiny_helper):
    h = load_helper(tiny_helper)
    ids = [p.token_ids for p in prompts]
    batched = helper_logprobs(h, [p.text for p in prompts], token_ids=ids, batch_size=6)
    single = np.concatenate([helper_logprobs(h, [p.text], token_ids=[p.token_ids], batch_size=1) for p in prompts])
    assert np.abs(batched - single).max() < 1e-4


def test_cache_is_per_suite_and_identity_and_reused(ctx, prompts, tiny_helper, data_home):
    p = create("tiny-helper", ctx, allow_unapproved=True)
    for f in p._cache_dir().glob("*.npy"):  # other tests of the session may have cached these prompts already
        f.unlink()
    first = p.distributions(prompts[:4])
    files = sorted(p._cache_dir().glob("*.npy"))
    assert len(files) == 4 and ctx.suite in str(p._cache_dir()) and p.helper_identity["id"] in str(p._cache_dir())
    f0 = p._cache_dir() / p._cache_name(prompts[0])
    np.save(f0, np.load(f0) * 0 + 1.0)  # tamper: the cached file is what is read back
    again = create("tiny-helper", ctx, allow_unapproved=True).distributions(prompts[:4])
    assert np.allclose(again[1:], first[1:], atol=1e-6)
    assert np.allclose(again[0], 1.0 / ctx.vocab_size)
    f0.unlink()
    assert np.allclose(create("tiny-helper", ctx, allow_unapproved=True).distributions(prompts[:1]), first[:1], atol=1e-6)


def test_the_target_itself_is_refused(ctx):
    from tasks.target import default_target_path

    with pytest.raises(HelperError, match="same weights as the suite's target"):
        create("model", ctx, allow_unapproved=True, path=str(default_target_path()))
    from tasks.target import _materialize

    folder, _ = _materialize(default_target_path())  # the float32 copy in the model cache is the target too
    with pytest.raises(HelperError, match="same weights as the suite's target"):
        create("model", ctx, allow_unapproved=True, path=str(folder))


def test_a_helper_with_another_tokenizer_is_mapped(ctx, prompts, tmp_path):
    """A randomly initialised Llama with a small byte-fallback BPE tokenizer (real model code, real mapping)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator([p.text for p in prompts] * 2, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"], show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                 unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(hf), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(tmp_path / "rand")
    hf.save_pretrained(tmp_path / "rand")
    p = create("model", ctx, allow_unapproved=True, path=str(tmp_path / "rand"), cache=False)
    assert not p.same_tokenizer
    q = p.distributions(prompts[:3])
    assert q.shape == (3, ctx.vocab_size) and np.allclose(q.sum(axis=1), 1.0) and (q > 0).all()
    # the mass the helper gives its "▁the"-like tokens lands on the target's "Ġ..." tokens, not on specials
    assert q[:, :17].sum(axis=1).max() < 0.01
    assert p.identity()["mapping"] == "first-token marginalization"


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "missing.gguf", "does not exist"),
    (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "not a .gguf model"),
    (lambda d: (d / "fake.gguf").write_bytes(b"NOPE" * 10) and d / "fake.gguf", "not a GGUF file"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
    (lambda d: ((d / "broken").mkdir(), (d / "broken" / "config.json").write_text(json.dumps({"model_type": "llama"})),
                (d / "broken" / "model.safetensors").write_bytes(b"junk"))[0] or d / "broken", "could not load"),
])
def test_bad_helper_paths_give_clear_errors(ctx, tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(HelperError, match=match):
        create("model", ctx, allow_unapproved=True, path=str(path))


def test_missing_path_option(ctx):
    with pytest.raises(HelperError, match="path="):
        create("model", ctx, allow_unapproved=True)


def test_helper_precision_is_part_of_its_identity(ctx, prompts, tiny_helper):
    """``-O dtype=bfloat16``: the helper runs in bfloat16 (log-softmax in float32), is another predictor for approval
    and caching, and its predictions stay close to float32's; an unknown dtype or device is refused by name."""
    from predictors.model import output_settings

    f32 = create("tiny-helper", ctx, allow_unapproved=True, cache=False)
    bf16 = create("tiny-helper", ctx, allow_unapproved=True, cache=False, dtype="bfloat16")
    assert "dtype" not in f32.identity()["settings"] and bf16.identity()["settings"]["dtype"] == "bfloat16"
    assert f32.settings_key != bf16.settings_key
    assert output_settings(tiny_helper, {"dtype": "bfloat16"})["dtype"] == "bfloat16"
    assert "dtype" not in output_settings(tiny_helper, {"device": "cpu"})
    a, b = f32.distributions(prompts[:4]), bf16.distributions(prompts[:4])
    assert next(load_helper(tiny_helper, dtype="bfloat16").model.parameters()).dtype.__repr__() == "torch.bfloat16"
    kl = (a * (np.log(a) - np.log(b))).sum(axis=1)
    assert not np.array_equal(a, b) and kl.max() < 0.05
    for bad, word in (({"dtype": "int4"}, "dtype 'int4'"), ({"device": "tpu"}, "device 'tpu'")):
        with pytest.raises(HelperError, match=word):
            create("tiny-helper", ctx, allow_unapproved=True, **bad)
