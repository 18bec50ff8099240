"""The vLLM backend agrees with the transformers path (``tasks.vllm_backend`` states the tolerances and why): the
log-probabilities of given continuations per token, and sampling in distribution. GPU machines with the ``[vllm]``
extra only; elsewhere every test skips with the reason printed. The dtype vLLM runs in is
``$LOGITPRED_VLLM_DTYPE`` (default float32; ``scripts/gpu_check.sh`` also runs bfloat16): one vLLM engine per
process."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.stats import chisquare

from tasks.continuations import Item, chain_rule_truth
from tasks.tokens import encode_text
from tasks.vllm_backend import TOLERANCE, VLLMBackend, available
from tests.tasks.tiny_models import TEXT

DTYPE = os.environ.get("LOGITPRED_VLLM_DTYPE", "float32")


@pytest.fixture(scope="module")
def gpu_target(data_home):
    ok, reason = available()
    if not ok:
        print(f"vLLM tests skipped: {reason}")
        pytest.skip(reason)
    from tasks import load_target

    return load_target(device="cuda", dtype="float32")  # the reference: transformers, float32, on the same GPU


@pytest.fixture(scope="module")
def backend(gpu_target):
    from tasks.target import _materialize, resolve_target

    folder = _materialize(resolve_target(None))[0]
    print(f"vLLM: {available()[1]}, dtype {DTYPE}, tolerance (max, mean) {TOLERANCE[DTYPE]} nats per token")
    return VLLMBackend(folder, dtype=DTYPE, seed=0)


def wiki_items(tokenizer) -> list[Item]:
    from tasks import read_corpus, split_documents

    _, held = split_documents(read_corpus("wiki"), seed=0, heldout_fraction=0.1)
    items = []
    for doc in held[:40]:
        ids = encode_text(tokenizer, doc.text)
        if len(ids) >= 80:
            items += [Item(ids[:40], ids[40:56]), Item(ids[:40], ids[60:68]), Item(ids[:20], ids[20:36])]
    return items[:30]


def test_vllm_logprobs_of_given_continuations_agree(backend, gpu_target):
    items = wiki_items(gpu_target.tokenizer)
    ref = chain_rule_truth(gpu_target.model, items, bos_ids=gpu_target.bos_ids)
    got = backend.continuation_logprobs(items, bos_ids=gpu_target.bos_ids)
    d = np.concatenate([np.abs(g - r.step_logprobs.astype(np.float64)) for g, r in zip(got, ref, strict=True)])
    print(f"vLLM {DTYPE} vs transformers float32: max |Δ log p| {d.max():.2e}, mean {d.mean():.2e} ({d.size} tokens)")
    top, mean = TOLERANCE[DTYPE]
    assert d.max() <= top and d.mean() <= mean


def test_vllm_samples_follow_the_targets_distribution(backend, gpu_target):
    bos = gpu_target.bos_ids
    prompt = encode_text(gpu_target.tokenizer, TEXT)[:24]
    first, _ = backend.sample(prompt, k=2000, max_tokens=1, seed=3, bos_ids=bos)
    probs = np.exp(chain_rule_truth(gpu_target.model, [Item(prompt, [0], True)], bos_ids=bos)[0].full[0]
                   .astype(np.float64))
    counts = np.bincount([s[0] for s in first], minlength=probs.size)[: probs.size]
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5  # Pearson's rule: bins expected below 5 merged into one
    p = chisquare(np.append(counts[~small], counts[small].sum()), np.append(expected[~small], expected[small].sum()))
    print(f"first tokens of 2000 vLLM samples vs the transformers distribution: chi-square p = {p.pvalue:.3g}")
    assert p.pvalue > 1e-3

    samples, logps = backend.sample(prompt, k=32, max_tokens=8, seed=4, bos_ids=bos)
    again, _ = backend.sample(prompt, k=32, max_tokens=8, seed=4, bos_ids=bos)
    assert samples == again and all(len(s) == 8 for s in samples)
    ref = chain_rule_truth(gpu_target.model, [Item(prompt, s) for s in samples], bos_ids=bos)
    d = np.concatenate([np.abs(lp - r.step_logprobs) for lp, r in zip(logps, ref, strict=True)])
    print(f"vLLM's log-probs of its own samples vs transformers: max |Δ| {d.max():.2e}, mean {d.mean():.2e}")
    assert d.max() <= TOLERANCE[DTYPE][0] and d.mean() <= TOLERANCE[DTYPE][1]
