"""Every metric against an independent reference (scipy or a direct per-row computation)."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax
from scipy.stats import entropy as scipy_entropy

from evals import metrics as M


def _batch(rng, n=7, v=50, sharp=3.0):
    truth = log_softmax(rng.normal(size=(n, v)) * sharp, axis=1)
    pred = np.exp(log_softmax(rng.normal(size=(n, v)) * sharp, axis=1))
    return truth, pred


@pytest.fixture(params=[0, 1, 2])
def batch(request):
    return _batch(np.random.default_rng(request.param))


def test_kl_matches_scipy_entropy(batch):
    truth, pred = batch
    ref = np.array([scipy_entropy(np.exp(t), q) for t, q in zip(truth, pred, strict=True)])
    np.testing.assert_allclose(M.kl_divergence(truth, pred), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(M.kl_divergence(truth, pred, base=2), ref / np.log(2), rtol=1e-10)


def test_reverse_kl_matches_scipy(batch):
    truth, pred = batch
    ref = np.array([scipy_entropy(q, np.exp(t)) for t, q in zip(truth, pred, strict=True)])
    np.testing.assert_allclose(M.reverse_kl_divergence(truth, pred), ref, rtol=1e-9, atol=1e-12)


def test_js_matches_scipy_squared_distance(batch):
    truth, pred = batch
    ref = np.array([jensenshannon(np.exp(t), q, base=2) ** 2 for t, q in zip(truth, pred, strict=True)])
    np.testing.assert_allclose(M.js_divergence(truth, pred), ref, rtol=1e-8, atol=1e-12)


def test_tv_brier_top1_topk_direct(batch):
    truth, pred = batch
    p = np.exp(truth)
    for i in range(len(p)):
        assert M.total_variation_distance(truth, pred)[i] == pytest.approx(0.5 * sum(abs(a - b) for a, b in zip(p[i], pred[i], strict=True)))
        assert M.brier_score_loss(truth, pred)[i] == pytest.approx(sum((b - a) ** 2 for a, b in zip(p[i], pred[i], strict=True)))
        assert M.top1_agreement_score(truth, pred)[i] == float(np.argmax(p[i]) == np.argmax(pred[i]))
        k = 5
        ref = len(set(np.argsort(-p[i])[:k]) & set(np.argsort(-pred[i])[:k])) / k
        assert M.topk_overlap_score(truth, pred, k=k)[i] == pytest.approx(ref)


def test_cross_entropy_and_entropy_direct(batch):
    truth, pred = batch
    ids = np.arange(len(pred)) % pred.shape[1]
    np.testing.assert_allclose(M.cross_entropy_loss(pred, ids), [-np.log(pred[i, t]) for i, t in enumerate(ids)])
    np.testing.assert_allclose(M.entropy(truth), [scipy_entropy(np.exp(t)) for t in truth], rtol=1e-10)


def test_edge_cases_identical_near_onehot_and_underflow():
    v = 1000
    sure = np.full((1, v), -800.0)  # exp underflows to exactly 0 in float64 for every token but one
    sure[0, 3] = 0.0
    q_same = np.exp(sure)
    q_same = np.where(q_same > 0, q_same, 1e-300)
    q_same /= q_same.sum()
    assert M.kl_divergence(sure, q_same)[0] == pytest.approx(0.0, abs=1e-12)
    assert M.js_divergence(sure, q_same)[0] == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((1, v), 1.0 / v)
    assert M.kl_divergence(sure, uniform)[0] == pytest.approx(np.log(v))
    assert M.js_divergence(sure, uniform)[0] <= 1.0
    assert M.total_variation_distance(sure, uniform)[0] == pytest.approx(1 - 1 / v)
    # identical distributions: every divergence is zero and agreement is perfect
    t = log_softmax(np.random.default_rng(5).normal(size=(3, 20)), axis=1)
    same = np.exp(t)
    np.testing.assert_allclose(M.kl_divergence(t, same), 0, atol=1e-12)
    np.testing.assert_allclose(M.reverse_kl_divergence(t, same), 0, atol=1e-12)
    np.testing.assert_allclose(M.top1_agreement_score(t, same), 1)
    np.testing.assert_allclose(M.topk_overlap_score(t, same, k=4), 1)


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="one row per prompt"):
        M.kl_divergence(np.zeros((2, 3)), np.ones((2, 4)) / 4)
    with pytest.raises(ValueError, match="2-d"):
        M.kl_divergence(np.zeros(3), np.ones(3) / 3)
    with pytest.raises(ValueError, match="k must be"):
        M.topk_overlap_score(np.zeros((1, 3)), np.ones((1, 3)) / 3, k=4)
