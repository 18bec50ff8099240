"""Exact ground truth by enumeration (issue 13 part 2): next-token marginals of a product distribution for the whole
vocabulary at once, and P_D(B) of a multi-token behaviour, against direct per-input forward passes without any cache
(tiny random-weight model); log-uniform token picking; supports too large to enumerate are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.rare.distributions import DistributionError, ProductDistribution
from tasks.rare.exact import behaviour_probability, check_support, pick_tokens, token_marginals
from tasks.rare.scorer import BehaviourScorer
from tests.tasks.tiny_models import tiny

V, BOS, PREFIX = 64, [1], [5, 9]


def _dist():
    return ProductDistribution("d", tuple(PREFIX), "", (np.array([10, 12, 14, 16]), np.array([20, 21, 22])),
                               (np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.5, 0.25, 0.25])))


def _direct(model, x):
    """Next-token log-softmax after bos + prefix + x, one plain forward per input (no cache, no batching)."""
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([BOS + PREFIX + list(x)])).logits[0, -1].double(), -1)


def test_token_marginals_equal_direct_enumeration():
    model, d = tiny("llama", V), _dist()
    got = token_marginals(model, d, bos_ids=BOS, batch_size=5)
    p1, p0 = np.zeros(V), np.zeros(V)
    for x, lp in d.enumerate():
        for row, w in zip(x.tolist(), np.exp(lp), strict=True):
            z = _direct(model, row)
            p1 += w * np.exp(z.numpy())
            p0[int(z.argmax())] += w
    np.testing.assert_allclose(got.p1, p1, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(got.p0, p0, atol=1e-12)
    assert got.p1.sum() == pytest.approx(1.0, abs=1e-6) and got.passes.forward == d.support_size == 12


def test_behaviour_probability_equals_direct_enumeration():
    model, d = tiny("gemma3", V), _dist()
    members = ((3, 4), (7,))
    sc = BehaviourScorer(model, bos_ids=BOS, prefix=PREFIX, members=members, batch_size=4)
    want1 = want0 = 0.0
    for x, lp in d.enumerate():
        for row, w in zip(x.tolist(), np.exp(lp), strict=True):
            p, greedy = 0.0, False
            for m in members:
                logp, path = 0.0, True
                for t in range(len(m)):
                    z = _direct(model, row + list(m[:t]))
                    logp += float(z[m[t]])
                    path &= int(z.argmax()) == m[t]
                p, greedy = p + np.exp(logp), greedy or path
            want1 += w * p
            want0 += w * greedy
    assert behaviour_probability(sc, d, temperature=1) == pytest.approx(want1, rel=1e-4)
    assert behaviour_probability(sc, d, temperature=0) == pytest.approx(want0, abs=1e-12)
    assert sc.passes.forward == 2 * d.support_size  # one pass per input and temperature asked
    with pytest.raises(ValueError, match="temperature"):
        behaviour_probability(sc, d, temperature=0.5)


def test_supports_too_large_and_token_picking():
    big = ProductDistribution("big", (), "", tuple(np.arange(40) for _ in range(5)), tuple(np.full(40, 1 / 40)
                                                                                      for _ in range(5)))
    with pytest.raises(DistributionError, match="102,400,000 inputs"):
        check_support(big)
    p = np.logspace(-10, -1, 200)
    got = pick_tokens(p, 4, 1e-8, 1e-3)
    assert len(set(got)) == 4 and np.allclose(np.log10(p[got]), [-8, -19 / 3, -14 / 3, -3], atol=0.05)
    with pytest.raises(ValueError, match="only"):
        pick_tokens(p, 500, 1e-8, 1e-3)
