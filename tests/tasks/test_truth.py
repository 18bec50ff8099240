"""Cached truth equals a direct single-prompt forward pass, whatever the batch size (padding must not leak)."""

import numpy as np
import pytest
from scipy.special import logsumexp

from tasks.truth import compute_truth, direct_truth


def test_cached_truth_is_normalized_log_probs(tiny_suite):
    for split in ("practice", "sealed"):
        ids, logp, nxt = tiny_suite.truth_split(split)
        assert logp.dtype == np.float32 and logp.shape == (len(ids), tiny_suite.vocab_size)
        np.testing.assert_allclose(logsumexp(logp.astype(np.float64), axis=1), 0.0, atol=1e-4)
        assert list(nxt) == [p.next_token_id for p in tiny_suite.prompts(split)]


def test_cached_truth_equals_direct_forward_pass(tiny_suite, target):
    prompts = tiny_suite.prompts("practice")[:4]
    for p in prompts:
        ref = direct_truth(target.model, p.token_ids, bos_ids=tiny_suite.bos_ids)
        np.testing.assert_allclose(tiny_suite.truth(p.id), ref, atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_does_not_change_truth(tiny_suite, target, batch_size):
    prompts = tiny_suite.prompts("sealed")
    _, cached, _ = tiny_suite.truth_split("sealed")
    got = compute_truth(target.model, prompts, bos_ids=tiny_suite.bos_ids, batch_size=batch_size)
    np.testing.assert_allclose(got, cached, atol=1e-4)


def test_several_cuts_of_one_document_share_a_pass(target, tiny_suite):
    """Prompts cut from the same document at different points get the same answers as separate passes."""
    base = tiny_suite.prompts("practice")[0]

    class P:  # two cuts of one document
        def __init__(self, i, n):
            self.id, self.doc, self.token_ids = f"x{i}", base.doc, base.token_ids[:n]

    cuts = [P(0, 8), P(1, len(base.token_ids))]
    got = compute_truth(target.model, cuts, batch_size=2)
    for row, p in zip(got, cuts, strict=True):
        np.testing.assert_allclose(row, direct_truth(target.model, p.token_ids), atol=1e-4)
