"""Truth and helper predictions come from each architecture's own forward: tiny seeded random-weight models of real
architectures (Llama with an untied head, GPT-2 with learned positions, Gemma 3 with final soft-capping and sliding
windows, Granite with logits_scaling, Cohere with logit_scale, a BERT decoder) with the project's real tokenizers,
checked through the harness path (batched, right-padded, several cuts per row) against each model's plain
``model(input_ids).logits[0, -1]``; the former hand-rolled path (decoder + output layer) shown wrong for Granite and
Cohere; unsupported models and prompts beyond the context refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.compute import compute_truth, direct_truth
from tasks.suite import Prompt
from tasks.target import TargetError, bos_ids
from tasks.tokens import encode_text, special_ids
from tests.tasks.tiny_models import TEXT, tiny

LENGTHS = (3, 9, 17, 30, 44)  # prompts of different lengths: rows of one batch are padded differently


@pytest.fixture(scope="module")
def smol_tok(data_home):
    from tasks.target import load_tokenizer

    return load_tokenizer()[0]


@pytest.fixture(scope="module")
def gemma_tok(data_home):
    from predictors.model import gemma_path
    from tasks.target import load_tokenizer

    return load_tokenizer(gemma_path())[0]


def prompts_of(tokenizer, doc_prefix: str = "d") -> list[Prompt]:
    ids = encode_text(tokenizer, TEXT)
    out = [Prompt(f"p{n}", f"{doc_prefix}{n}", tokenizer.decode(ids[:n]), tuple(ids[:n]), ids[n]) for n in LENGTHS]
    # two cuts of one document: one row of the batch keeps two positions, the other rows one
    out.append(Prompt("same-doc", f"{doc_prefix}{LENGTHS[-1]}", "", tuple(ids[:12]), ids[12]))
    return out


def hand_rolled(model, ids) -> np.ndarray:
    """The former ``tasks.truth`` path: the decoder, then the output layer by hand (+ Gemma's soft-capping)."""
    import torch

    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=torch.tensor([list(ids)])).last_hidden_state[0, -1]
        logits = model.get_output_embeddings()(hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits.float(), dim=-1).numpy()


ARCHS = [("llama", "smol"), ("gpt2", "smol"), ("gemma3", "gemma"), ("granite", "smol"), ("cohere", "smol"),
         ("bert-decoder", "smol")]


@pytest.mark.parametrize(("kind", "tok_name"), ARCHS)
def test_batched_truth_equals_each_models_own_forward(kind, tok_name, smol_tok, gemma_tok):
    from tasks.forward import check_causal_lm

    tok = smol_tok if tok_name == "smol" else gemma_tok
    model = tiny(kind, len(tok))
    assert check_causal_lm(model) == "rows"  # one call per batch, each row its own positions
    bos = bos_ids(tok)
    assert bos == ([2] if tok_name == "gemma" else [])
    prompts = prompts_of(tok)
    for batch_size in (1, 4, 16):
        got = compute_truth(model, prompts, bos_ids=bos, batch_size=batch_size, pad_id=tok.pad_token_id or 0)
        assert got.shape == (len(prompts), len(tok)) and got.dtype == np.float32
        for row, p in zip(got, prompts, strict=True):
            ref = direct_truth(model, p.token_ids, bos_ids=bos)  # plain model(ids).logits[0, -1], log-softmax
            assert np.abs(row - ref).max() <= 1e-4, (kind, batch_size, p.id)
    spread = got.max(axis=1) - got.min(axis=1)
    assert spread.min() > 1.0  # distributions far from flat: a wrong scale or cap would show


@pytest.mark.parametrize(("kind", "wrong"), [("granite", True), ("cohere", True), ("llama", False), ("gemma3", False)])
def test_the_old_hand_rolled_path_missed_granite_and_cohere_scaling(kind, wrong, smol_tok, gemma_tok):
    tok = gemma_tok if kind == "gemma3" else smol_tok
    model = tiny(kind, len(tok))
    ids = [*bos_ids(tok), *encode_text(tok, TEXT)[:20]]
    old = hand_rolled(model, ids)
    ref = direct_truth(model, ids)
    new = compute_truth(model, [Prompt("p", "d", "", tuple(ids[len(bos_ids(tok)):]), 0)], bos_ids=bos_ids(tok))[0]
    assert np.abs(new - ref).max() <= 1e-4
    gap = float(np.abs(old - ref).max())
    if wrong:  # logits_scaling 4 divides the logits, logit_scale 0.25 multiplies them: log-probs move by whole nats
        assert gap > 0.5, gap
    else:
        assert gap <= 1e-4, gap


def test_helper_predictions_use_the_helpers_own_forward(smol_tok):
    """predictors.model.helper_logprobs on a Granite helper (text encoded by the helper's tokenizer) equals its plain
    forward: the logits_scaling the old path dropped is there."""
    from predictors.model import Helper, helper_logprobs

    model = tiny("granite", len(smol_tok))
    ids = encode_text(smol_tok, TEXT)
    texts = [smol_tok.decode(ids[:n]) for n in (5, 21, 40)]
    helper = Helper(model, smol_tok, {}, [], 0)
    got = helper_logprobs(helper, texts, batch_size=3)
    for row, t in zip(got, texts, strict=True):
        assert np.abs(row - direct_truth(model, encode_text(smol_tok, t))).max() <= 1e-4


def test_output_layer_runs_only_at_cut_positions(smol_tok):
    """Memory stays bounded: the logits a batch materializes are (rows, kept positions, vocab), never the whole
    (rows, sequence, vocab)."""
    model = tiny("llama", len(smol_tok))
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        compute_truth(model, prompts_of(smol_tok), batch_size=16)
    finally:
        hook.remove()
    # the probe's 2-row batch, then one batch of 5 rows: 4 with one cut, 1 with two (the shared document)
    assert shapes[-1] == (5, 2, len(smol_tok))
    assert max(s[1] for s in shapes if s[0] == 5) == 2


def test_prompt_beyond_the_context_is_refused_with_the_sizes(smol_tok):
    model = tiny("llama", len(smol_tok), max_position_embeddings=40)
    ids = tuple(encode_text(smol_tok, TEXT)[:44])
    with pytest.raises(TargetError, match=r"prompt long needs 45 positions \(1 BOS \+ 44 tokens\), more than "
                                          r"LlamaForCausalLM's context of 40"):
        compute_truth(model, [Prompt("long", "d", "", ids, 0)], bos_ids=[1])
    ok = compute_truth(model, [Prompt("fits", "d", "", ids[:39], 0)], bos_ids=[1])[0]
    assert np.abs(ok - direct_truth(model, ids[:39], bos_ids=[1])).max() <= 1e-4


def test_gemma_gets_exactly_one_bos(gemma_tok):
    """Gemma 3's tokenizer adds <bos> (id 2): the model sees [2] + prompt ids, and prompt ids never start with it, even
    when the text itself starts with the string "<bos>"."""
    model = tiny("gemma3", len(gemma_tok))
    text = "<bos>" + TEXT
    ids = encode_text(gemma_tok, text)
    assert ids[0] != 2 and not set(ids) & special_ids(gemma_tok) and gemma_tok.decode(ids) == text
    assert gemma_tok(text, add_special_tokens=True)["input_ids"][:2] == [2, 2]  # what a plain encoding would give
    got = compute_truth(model, [Prompt("p", "d", text, tuple(ids[:25]), ids[25])], bos_ids=bos_ids(gemma_tok))[0]
    assert np.abs(got - direct_truth(model, [2, *ids[:25]])).max() <= 1e-4
    with pytest.raises(ValueError, match=r"prompt twice already starts with the BOS ids \[2\]"):
        compute_truth(model, [Prompt("twice", "d", "", (2, *ids[:5]), 0)], bos_ids=[2])


def _tiny_unsupported(kind: str):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    small = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 initializer_range=0.5)
    if kind == "encoder":
        return tf.BertForMaskedLM(tf.BertConfig(**small)).eval()
    if kind == "no-logits-to-keep":
        return tf.TrOCRForCausalLM(tf.TrOCRConfig(vocab_size=100, d_model=32, decoder_layers=2,
                                                  decoder_attention_heads=2, decoder_ffn_dim=64)).eval()
    if kind == "bidirectional":  # a BERT "LM head" without is_decoder=True attends to later tokens
        return tf.BertLMHeadModel(tf.BertConfig(**small, is_decoder=False)).eval()
    return tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=100, d_model=32, d_ff=64, num_layers=1, num_heads=2,
                                                     d_kv=16)).eval()


@pytest.mark.parametrize(("kind", "message"), [
    ("encoder", r"BertForMaskedLM\.forward does not accept logits_to_keep: the harness needs a decoder-only causal LM"),
    ("no-logits-to-keep", r"TrOCRForCausalLM\.forward does not accept logits_to_keep"),
    ("bidirectional", r"BertLMHeadModel is not causal: its log-probabilities after 4 tokens change by [0-9.e-]+ when "
                      r"3 more tokens follow"),
    ("encoder-decoder", r"T5ForConditionalGeneration is an encoder-decoder model"),
])
def test_unsupported_models_are_refused_by_name(kind, message):
    model = _tiny_unsupported(kind)
    with pytest.raises(TargetError, match=message):
        compute_truth(model, [Prompt("p", "d", "", (5, 6, 7), 8)])
