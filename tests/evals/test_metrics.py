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


def test_zero_probabilities_follow_0_log_0():
    """p = [0.5, 0.5, 0, 0] (two masked tokens, log-probability -inf) against q = [0.4, 0.4, 0.1, 0.1]."""
    with np.errstate(divide="ignore"):
        t = np.log(np.array([[0.5, 0.5, 0.0, 0.0]]))
    q = np.array([[0.4, 0.4, 0.1, 0.1]])
    m = M.per_prompt_metrics(t, q, np.array([0]), k=2)
    assert m["kl_nats"][0] == pytest.approx(np.log(1.25), abs=1e-12)  # 0.22314
    assert m["kl_nats"][0] == pytest.approx(0.22314, abs=1e-5)
    assert m["target_entropy_nats"][0] == pytest.approx(np.log(2), abs=1e-12)
    assert M.entropy(t)[0] == pytest.approx(np.log(2), abs=1e-12)
    assert m["reverse_kl_nats"][0] == np.inf
    assert m["js_bits"][0] == pytest.approx(jensenshannon([0.5, 0.5, 0, 0], q[0], base=2) ** 2, abs=1e-12)
    assert m["js_bits"][0] == pytest.approx(0.10803, abs=1e-5)
    assert m["tv"][0] == pytest.approx(0.2) and m["brier"][0] == pytest.approx(0.04)
    assert all(not np.isnan(v).any() for v in m.values())


def test_nan_or_plus_inf_truth_names_the_row():
    t = np.log(np.full((3, 4), 0.25))
    t[2, 1] = np.nan
    with pytest.raises(ValueError, match="truth row 2 holds nan at token 1"):
        M.kl_divergence(t, np.full((3, 4), 0.25))
    t[2, 1] = np.inf
    with pytest.raises(ValueError, match="truth row 2 holds inf"):
        M.per_prompt_metrics(t, np.full((3, 4), 0.25), np.zeros(3, dtype=int), k=2)


def test_ties_earn_no_credit():
    """A flat prediction's argmax is token 0; when the target's top token is 0 it must still score 1/V, not 1."""
    v = 8
    t = log_softmax(np.array([[5.0] + [0.0] * (v - 1), [0.0] * (v - 1) + [5.0]]), axis=1)
    flat = np.full((2, v), 1 / v)
    np.testing.assert_allclose(M.top1_agreement_score(t, flat), [1 / v, 1 / v])
    np.testing.assert_allclose(M.topk_overlap_score(t, flat, k=3), [3 / v, 3 / v])
    # a prediction naming token 0 first and spreading the rest uniformly: top-1 is certain, top-3 shares places
    q = np.array([[0.3] + [0.1] * 7])
    t1 = t[:1]
    assert M.top1_agreement_score(t1, q)[0] == 1.0
    # target's top-3 = {0, then two of the 7 tied tokens}: q's top-3 = {0} + 2 of 7 tied; expected overlap
    # = (1 + sum over the 7 tied tokens of (2/7)(2/7)) / 3
    assert M.topk_overlap_score(t1, q, k=3)[0] == pytest.approx((1 + 7 * (2 / 7) ** 2) / 3)


def test_tie_breaking_matches_enumeration():
    """Expected top-k overlap equals the average over every tie-break order (exhaustive, small V)."""
    import itertools

    p = np.array([0.3, 0.2, 0.2, 0.2, 0.1])
    q = np.array([0.25, 0.25, 0.25, 0.125, 0.125])
    k = 2
    scores = []
    for perm_p in itertools.permutations(range(5)):
        for perm_q in itertools.permutations(range(5)):
            # a tie-break order: sort by value descending, then by position in the permutation
            top_p = sorted(range(5), key=lambda v: (-p[v], perm_p.index(v)))[:k]
            top_q = sorted(range(5), key=lambda v: (-q[v], perm_q.index(v)))[:k]
            scores.append(len(set(top_p) & set(top_q)) / k)
    got = M.topk_overlap_score(np.log(p)[None], q[None], k=k)[0]
    assert got == pytest.approx(np.mean(scores), abs=1e-12)


# --- the dense path: per_prompt_metrics (chunked float64 kernels on a thread pool) against the functions above -------
def _reference_columns(t, q, ids, k=10):
    kl = M.kl_divergence(t, q)
    rows = np.arange(len(q))
    return {"kl_nats": kl, "kl_bits": kl / np.log(2), "reverse_kl_nats": M.reverse_kl_divergence(t, q),
            "js_bits": M.js_divergence(t, q), "tv": M.total_variation_distance(t, q), "brier": M.brier_score_loss(t, q),
            "top1": M.top1_agreement_score(t, q), f"top{k}_overlap": M.topk_overlap_score(t, q, k=k),
            "ce_realized_nats": M.cross_entropy_loss(q, ids), "target_ce_realized_nats": -t[rows, ids].astype(float),
            "target_entropy_nats": M.entropy(t)}


@pytest.mark.parametrize("threads", [1, 2])
def test_dense_path_equals_the_float64_functions(threads, monkeypatch):
    """float32 truth (as stored) over a 4,096-token vocabulary, 37 rows (chunks of 32 rows and a remainder), with
    masked tokens, ties at the top of the truth and a prediction that is flat: every column to 1e-9."""
    import tasks.truth_stats as TS

    monkeypatch.setattr(TS, "THREADS", threads)
    rng = np.random.default_rng(11)
    V = 4096
    t = log_softmax(rng.normal(size=(37, V)) * rng.uniform(0.5, 5, size=(37, 1)), axis=1)
    t[3, :100] = -np.inf
    t[4, [7, 70, 700]] = t[4].max() + 2  # three-way tie at the top
    t = log_softmax(t, axis=1).astype(np.float32)
    q = np.exp(log_softmax(rng.normal(size=(37, V)) * 2, axis=1))
    q[5] = 1 / V  # flat: ties everywhere
    q[6, [1, 2, 3]] = q[6].max()  # ties at the top of the prediction
    q /= q.sum(axis=1, keepdims=True)
    ids = rng.integers(0, V, size=37)
    got = M.per_prompt_metrics(t, q, ids)
    ref = _reference_columns(t, q, ids)
    assert list(got) == list(ref) == M.metric_columns(10)
    for col in ref:
        both_inf = np.isinf(got[col]) & (got[col] == ref[col])
        with np.errstate(invalid="ignore"):
            diff = np.where(both_inf, 0.0, np.abs(got[col] - ref[col]))
        assert diff.max() <= 1e-9, (col, diff.max())
    assert got["reverse_kl_nats"][3] == np.inf and np.isfinite(got["kl_nats"][3])
    assert got["top1"][5] == pytest.approx(1 / V)
    no_tvjs = M.per_prompt_metrics(t, q, ids, tv_js=False)
    assert "tv" not in no_tvjs and "js_bits" not in no_tvjs
    np.testing.assert_array_equal(no_tvjs["kl_nats"], got["kl_nats"])


def test_top_candidates_give_topk_inclusion_exactly():
    """The k-th largest value from block maxima and candidates equals a full partition, ties included."""
    from tasks.truth_stats import support, top_candidates

    rng = np.random.default_rng(2)
    x = np.round(rng.normal(size=(20, 1024)), 1)  # many ties
    x[0] = 0.5  # all equal
    x[1, :5] = 9.0  # a tie straddling k = 3
    for k in (1, 3, 10, 64):
        indptr, ids, incl = support(top_candidates(x, k), len(x), k)
        dense = np.zeros_like(x)
        dense[np.repeat(np.arange(len(x)), np.diff(indptr)), ids] = incl
        np.testing.assert_allclose(dense, M.topk_inclusion(x, k), rtol=0, atol=1e-15)
