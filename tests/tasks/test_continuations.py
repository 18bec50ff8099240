"""Trajectory truth by the chain rule equals one next-token pass per step (real SmolLM2, tiny Llama and Gemma 3 with
a BOS and a sliding window), with and without the shared prefix; a model whose answers are known by hand; the
output layer runs only at continuation positions; sampling is seeded, the same with and without the KV cache, and
its frequencies match the model's softmax (chi-square); inputs beyond the context are refused with their sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chisquare

from tasks.compute import direct_truth
from tasks.continuations import (
    Item,
    chain_rule_truth,
    continuation_logprobs,
    prefix_sharing,
    prompt_seed,
    sample_continuations,
    sampling_settings,
)
from tasks.target import TargetError, bos_ids
from tasks.tokens import encode_text
from tests.tasks.tiny_models import TEXT, tiny


def items_of(ids: list[int]) -> list[Item]:
    """Two prompts: the first with three continuations of different lengths (a shared prefix, padded rows), the
    second with one (it goes through the whole-sequence path)."""
    return [Item(ids[:20], ids[20:28], True), Item(ids[:20], ids[40:43], False), Item(ids[:20], ids[30:31], True),
            Item(ids[:11], ids[11:17], True)]


def direct_passes(model, items, bos) -> list[np.ndarray]:
    """The reference: for each item, one plain forward on bos + prompt + y_<t per step t, stacked (m, vocab)."""
    return [np.stack([direct_truth(model, list(it.prompt_ids) + list(it.continuation_ids[:t]), bos_ids=bos)
                      for t in range(len(it.continuation_ids))]) for it in items]


def check(items, got, refs):
    """Each step's log-prob (and full distribution) equals its plain forward within 1e-4; the sum is the sum."""
    for it, g, ref in zip(items, got, refs, strict=True):
        cont = list(it.continuation_ids)
        assert g.token_ids == tuple(cont) and g.step_logprobs.shape == (len(cont),)
        assert np.abs(g.step_logprobs - ref[np.arange(len(cont)), cont]).max() <= 1e-4
        assert g.logprob == pytest.approx(float(np.sum(g.step_logprobs, dtype=np.float64)), abs=1e-9)
        assert (g.full is not None) == it.full
        if it.full:
            assert g.full.dtype == np.float32 and g.full.shape == ref.shape and np.abs(g.full - ref).max() <= 1e-4


def test_chain_rule_equals_next_token_passes_on_the_target(target):
    ids = encode_text(target.tokenizer, TEXT)
    items = items_of(ids)
    assert prefix_sharing(target.model)
    refs = direct_passes(target.model, items, target.bos_ids)
    for share in (True, False):
        got = chain_rule_truth(target.model, items, bos_ids=target.bos_ids, batch_size=2, share_prefix=share)
        check(items, got, refs)
    one = continuation_logprobs(target.model, ids[:20], [ids[20:28], ids[40:43]], full=[True, False])
    assert one[0].logprob == pytest.approx(got[0].logprob, abs=1e-4) and one[1].full is None


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_chain_rule_on_tiny_architectures(kind, data_home):
    """Gemma 3 (BOS [2], final soft-capping, a sliding window of 8 shorter than prompt and continuation) and Llama
    (untied head), with their real tokenizers, through both paths and several batches."""
    from predictors.model import gemma_path
    from tasks.target import load_tokenizer

    tok = load_tokenizer(gemma_path() if kind == "gemma3" else None)[0]
    model = tiny(kind, len(tok))
    bos = bos_ids(tok)
    assert bos == ([2] if kind == "gemma3" else [])
    assert prefix_sharing(model)
    ids = encode_text(tok, TEXT)
    items = [*items_of(ids), Item(ids[:20], ids[20:34], True)]  # 14 tokens: longer than the window
    refs = direct_passes(model, items, bos)
    for share in (True, False):
        got = chain_rule_truth(model, items, bos_ids=bos, batch_size=2, share_prefix=share,
                               pad_id=tok.pad_token_id or 0)
        check(items, got, refs)


def bigram_model():
    """A 1-layer Llama whose attention and MLP write nothing (o_proj, down_proj zero), so its logits after token a are
    lm_head(rmsnorm(E[a])): with E the 4x4 Hadamard rows (orthogonal, entries +-1, so rmsnorm leaves them as they are)
    and lm_head = (ln 3 / 4) E, the logits are ln 3 for b == a and 0 otherwise. By hand: the next token repeats the
    last one with probability 3 / (3 + 3) = 1/2, and is each other token with probability 1/6."""
    import torch
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=4, hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                         num_key_value_heads=1, head_dim=4, rms_norm_eps=0.0, tie_word_embeddings=False,
                         max_position_embeddings=64)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval()
    hadamard = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(hadamard)
        model.get_output_embeddings().weight.copy_(hadamard * math.log(3) / 4)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def test_a_case_checkable_by_hand():
    model = bigram_model()
    # p(0 0 2 | prompt 3 1) = p(0|1) p(0|0) p(2|0) = 1/6 * 1/2 * 1/6; p(1 1 | prompt 1) = 1/2 * 1/2
    got = chain_rule_truth(model, [Item([3, 1], [0, 0, 2], True), Item([1], [1, 1]), Item([3, 1], [1])])
    np.testing.assert_allclose(got[0].step_logprobs, np.log([1 / 6, 1 / 2, 1 / 6]), atol=1e-6)
    assert got[0].logprob == pytest.approx(math.log(1 / 72), abs=1e-6)
    assert got[1].logprob == pytest.approx(math.log(1 / 4), abs=1e-6)
    assert got[2].logprob == pytest.approx(math.log(1 / 2), abs=1e-6)
    want = np.log([[1 / 6, 1 / 2, 1 / 6, 1 / 6],  # step 1 follows token 1
                   [1 / 2, 1 / 6, 1 / 6, 1 / 6],  # steps 2 and 3 follow token 0
                   [1 / 2, 1 / 6, 1 / 6, 1 / 6]])
    np.testing.assert_allclose(got[0].full, want, atol=1e-6)


def test_output_layer_runs_only_at_continuation_positions(data_home):
    from tasks.target import load_tokenizer

    tok = load_tokenizer()[0]
    model = tiny("llama", len(tok))
    prefix_sharing(model)  # probe first: its own passes are not counted below
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    ids = encode_text(tok, TEXT)
    try:
        chain_rule_truth(model, items_of(ids), batch_size=8)
    finally:
        hook.remove()
    v = len(tok)
    # the shared prompt: one prefix pass keeping its last position, one pass over the 3 continuations' y_<m (width 7);
    # then the lone prompt's whole sequence keeping its 6 continuation positions
    assert shapes == [(1, 1, v), (2, 7, v), (1, 6, v)], shapes


def test_sampling_is_seeded_and_identical_without_the_cache(target):
    ids = encode_text(target.tokenizer, TEXT)[:24]
    kw = dict(k=4, max_tokens=8, seed=11, bos_ids=target.bos_ids)
    a = sample_continuations(target.model, ids, **kw)
    assert len(a) == 4 and all(len(s) == 8 for s in a) and len({tuple(s) for s in a}) > 1
    assert sample_continuations(target.model, ids, **kw) == a
    assert sample_continuations(target.model, ids, **kw, use_cache=False) == a
    assert sample_continuations(target.model, ids, **{**kw, "seed": 12}) != a
    model = tiny("gemma3", 300)  # sliding window 8 < 10 + 12 positions: the cache drops old keys
    b = sample_continuations(model, list(range(10, 20)), k=6, max_tokens=12, seed=0, bos_ids=[2])
    assert sample_continuations(model, list(range(10, 20)), k=6, max_tokens=12, seed=0, bos_ids=[2],
                                use_cache=False) == b
    assert prompt_seed(11, ids, target.bos_ids) != prompt_seed(11, ids[:-1], target.bos_ids)


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``, bins with expected count < 5 merged into one."""
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_frequencies_match_the_models_softmax(temperature):
    """4,000 seeded samples of 2 tokens from a tiny random Llama (vocab 40): the first tokens follow
    softmax(logits / T) after the prompt, and the second tokens of the rows whose first token was the most frequent
    follow softmax(logits / T) after prompt + that token (the cached step). Fixed seed: the test is deterministic."""
    model = tiny("llama", 40)
    prompt = [3, 17, 5, 29, 11]
    samples = np.array(sample_continuations(model, prompt, k=4000, max_tokens=2, seed=5, temperature=temperature))
    first = np.bincount(samples[:, 0], minlength=40)
    probs = np.exp(direct_truth(model, prompt).astype(np.float64) / temperature)
    assert _chi2_pvalue(first, probs) > 1e-3
    top = int(first.argmax())
    second = np.bincount(samples[samples[:, 0] == top, 1], minlength=40)
    assert _chi2_pvalue(second, np.exp(direct_truth(model, [*prompt, top]).astype(np.float64) / temperature)) > 1e-3
    wrong = np.roll(probs, 1)  # the test has power: a shifted distribution is rejected
    assert _chi2_pvalue(first, wrong) < 1e-6


def test_eos_ends_a_sample_and_settings_are_recorded():
    model = bigram_model()
    got = sample_continuations(model, [1], k=200, max_tokens=6, seed=0, eos_ids=[0])
    for s in got:
        assert (s[-1] == 0 and 0 not in s[:-1]) or (len(s) == 6 and 0 not in s)
    assert any(s[-1] == 0 and len(s) < 6 for s in got) and any(len(s) == 6 for s in got)
    settings = sampling_settings(k=200, max_tokens=6, seed=0, eos_ids=[0])
    assert settings["sampler"] == "logitpred.gumbel-max/1" and settings["temperature"] == 1.0
    assert settings["eos_ids"] == [0] and settings["top_k"] is None and "torch" in settings


def test_inputs_beyond_the_context_are_refused_with_the_sizes():
    model = tiny("llama", 300, max_position_embeddings=40)
    with pytest.raises(TargetError, match=r"item 1 needs 41 positions \(1 BOS \+ 30 prompt \+ 10 continuation "
                                          r"tokens\), more than LlamaForCausalLM's context of 40"):
        chain_rule_truth(model, [Item([5] * 30, [6] * 9), Item([5] * 30, [6] * 10)], bos_ids=[1])
    ok = chain_rule_truth(model, [Item([5] * 30, [6] * 9)], bos_ids=[1])[0]
    assert ok.step_logprobs.shape == (9,)
    with pytest.raises(TargetError, match=r"sampling needs 41 positions \(1 BOS \+ 30 prompt \+ 10 sampled tokens\)"):
        sample_continuations(model, [5] * 30, k=2, max_tokens=10, seed=0, bos_ids=[1])
    with pytest.raises(ValueError, match=r"item 0: the continuation is empty"):
        chain_rule_truth(model, [Item([5], [])])
    with pytest.raises(ValueError, match=r"item 0: the prompt already starts with the BOS ids \[1\]"):
        chain_rule_truth(model, [Item([1, 5], [6])], bos_ids=[1])
    with pytest.raises(ValueError, match=r"token id 300 is outside the model's vocabulary of 300"):
        chain_rule_truth(model, [Item([5], [300])])
