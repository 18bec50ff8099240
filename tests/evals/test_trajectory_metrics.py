"""Trajectory metrics (issue 12 part 5) against direct computations: errors by hand, ``scipy.stats.linregress``,
``scipy.special.rel_entr`` per step, and the sequence KL by enumerating every sequence of a tiny vocabulary (the MC
estimator's exact expectation equals it; its sample mean converges to it). Perfect predictions score exactly 0."""

import itertools

import numpy as np
import pytest
from scipy import special, stats

from evals.stats import bootstrap_ci
from evals.trajectory_metrics import (
    aggregate,
    calibration_fit,
    calibration_plot,
    log_errors,
    summarize_trajectory_kl,
    trajectory_kl,
)

LN10 = np.log(10)


def questions(n=60, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.integers(1, 20, n)
    true = -rng.gamma(2.0, 2.0, n) * m
    pred = true + rng.normal(0, 3.0, n)
    return true, np.minimum(pred, 0.0), m


def log_softmax(x, axis=-1):
    return x - special.logsumexp(x, axis=axis, keepdims=True)


def test_log_errors_match_direct_formulas_and_sign():
    true, pred, m = questions()
    e = log_errors(true, pred, m)
    np.testing.assert_array_equal(e["error_nats"], pred - true)
    np.testing.assert_allclose(e["error_log10"], np.log10(np.exp(pred)) - np.log10(np.exp(true)), atol=1e-9)
    np.testing.assert_allclose(e["abs_error_log10"], np.abs(pred - true) / LN10, rtol=1e-15)
    np.testing.assert_allclose(e["error_nats_per_token"], (pred - true) / m, rtol=1e-15)
    np.testing.assert_allclose(e["abs_error_nats_per_token"], np.abs(pred - true) / m, rtol=1e-15)
    over = log_errors(np.array([-5.0]), np.array([-5.0 + LN10]), np.array([2]))
    assert over["error_log10"][0] == pytest.approx(1.0) and over["error_nats_per_token"][0] == pytest.approx(LN10 / 2)


def test_perfect_prediction_scores_exactly_zero():
    true, _, m = questions()
    for name, v in log_errors(true, true.copy(), m).items():
        assert (v == 0.0).all(), name
    agg = aggregate(true, true.copy(), m)
    assert agg["mean_abs_log10_error"] == [0.0, 0.0, 0.0] and agg["mean_log10_error"] == [0.0, 0.0, 0.0]
    assert agg["mean_abs_nats_per_token"] == [0.0, 0.0, 0.0] and agg["within_10x_share"] == [1.0, 1.0, 1.0]
    assert calibration_fit(true / LN10, true / LN10) == (1.0, 0.0)
    assert agg["calibration_slope"][0] == 1.0 and agg["calibration_intercept"][0] == 0.0


@pytest.mark.parametrize("args, message", [
    ((np.array([-1.0, np.nan]), np.array([-1.0, -1.0]), np.array([1, 1])), r"true_logp\[1\] is nan"),
    ((np.array([-1.0]), np.array([-np.inf]), np.array([1])), r"pred_logp\[0\] is -inf"),
    ((np.array([-1.0, -2.0]), np.array([-1.0]), np.array([1, 1])), "same shape"),
    ((np.array([-1.0]), np.array([-1.0]), np.array([0])), "token counts >= 1"),
])
def test_log_errors_reject_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        log_errors(*args)


def test_aggregate_matches_direct_values_and_bootstrap_helper():
    true, pred, m = questions(n=80, seed=3)
    pred[0] = true[0] + LN10  # exactly 10x: within
    agg = aggregate(true, pred, m, seed=7)
    abs10 = np.abs(pred - true) / LN10
    assert agg["mean_abs_log10_error"][0] == pytest.approx(abs10.mean(), rel=1e-12)
    assert agg["within_10x_share"][0] == pytest.approx(np.mean(abs10 <= 1.0), rel=1e-12)
    assert agg["mean_log10_error"][0] == pytest.approx(np.mean((pred - true) / LN10), rel=1e-12)
    assert agg["mean_abs_log10_error"] == list(bootstrap_ci(abs10, seed=7))
    for est, lo, hi in agg.values():
        assert lo <= est <= hi
    assert agg == aggregate(true, pred, m, seed=7)  # seeded: the same CIs every time
    fit = stats.linregress(pred / LN10, true / LN10)
    assert agg["calibration_slope"][0] == pytest.approx(fit.slope, rel=1e-12)
    assert agg["calibration_intercept"][0] == pytest.approx(fit.intercept, rel=1e-10)
    assert agg["calibration_slope"][1] < fit.slope < agg["calibration_slope"][2]


def test_calibration_fit_matches_linregress():
    rng = np.random.default_rng(1)
    x = rng.normal(-8, 3, 200)
    y = 0.8 * x - 1.0 + rng.normal(0, 0.5, 200)
    slope, intercept = calibration_fit(x, y)
    fit = stats.linregress(x, y)
    assert slope == pytest.approx(fit.slope, rel=1e-12) and intercept == pytest.approx(fit.intercept, rel=1e-12)
    with pytest.raises(ValueError, match="two distinct predicted values"):
        calibration_fit(np.full(5, -3.0), y[:5])


def test_calibration_plot_writes_a_png(tmp_path):
    true, pred, _ = questions()
    path = calibration_plot(pred / LN10, true / LN10, tmp_path / "plots" / "calibration.png", title="t")
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")


def random_steps(rng, n, m, vocab, zeros=False):
    t = log_softmax(rng.normal(0, 2, (n, m, vocab))).astype(np.float32)
    q = log_softmax(rng.normal(0, 2, (n, m, vocab))).astype(np.float32)
    if zeros:  # the target never gives some tokens: 0 log 0 = 0
        t[..., :2] = -np.inf
        t = log_softmax(t.astype(np.float64)).astype(np.float32)
    return t, q


def test_step_kl_matches_rel_entr_and_sums_over_steps():
    rng = np.random.default_rng(2)
    t, q = random_steps(rng, 5, 4, 50, zeros=True)
    res = trajectory_kl(t, q)
    direct = special.rel_entr(np.exp(t.astype(np.float64)), np.exp(q.astype(np.float64))).sum(axis=-1)
    np.testing.assert_allclose(res.per_step, direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(res.total, res.per_step.sum(axis=1))
    assert res.mask.all() and res.per_step.shape == (5, 4)


def test_perfect_step_predictions_give_exactly_zero():
    rng = np.random.default_rng(4)
    t, _ = random_steps(rng, 6, 3, 40, zeros=True)
    res = trajectory_kl(t, t.copy())
    assert (res.per_step == 0.0).all() and (res.total == 0.0).all()
    summary = summarize_trajectory_kl(res)
    assert summary["total"] == [0.0, 0.0, 0.0] and all(s == [0.0, 0.0, 0.0] for s in summary["per_step"])


def test_zero_prediction_where_target_has_mass_is_inf():
    with np.errstate(divide="ignore"):
        t = np.log(np.array([[[0.5, 0.5, 0.0]]]))
        q = np.log(np.array([[[1.0, 0.0, 0.0]]]))
        assert trajectory_kl(t, q).total[0] == np.inf
        assert trajectory_kl(q, t).total[0] == pytest.approx(np.log(2))  # q's zero where p is zero: 0 log 0


def test_ragged_list_padded_array_and_chunking_agree():
    rng = np.random.default_rng(5)
    t, q = random_steps(rng, 7, 5, 30)
    lengths = [5, 1, 3, 0, 2, 5, 4]
    t_pad, q_pad = t.copy(), q.copy()
    for i, k in enumerate(lengths):
        t_pad[i, k:] = np.nan  # padding is never read
    ragged = trajectory_kl([t[i, :k] for i, k in enumerate(lengths)], [q[i, :k] for i, k in enumerate(lengths)])
    padded = trajectory_kl(t_pad, q_pad, lengths=lengths)
    tiny = trajectory_kl(t_pad, q_pad, lengths=lengths, chunk_bytes=8 * 30 * 2)  # two rows per chunk
    full = trajectory_kl(t, q)
    for res in (padded, tiny):
        np.testing.assert_array_equal(res.per_step, ragged.per_step)
        np.testing.assert_array_equal(res.total, ragged.total)
    np.testing.assert_array_equal(ragged.mask, np.arange(5) < np.array(lengths)[:, None])
    np.testing.assert_allclose(ragged.per_step[ragged.mask], full.per_step[ragged.mask], rtol=1e-12)
    assert (ragged.per_step[~ragged.mask] == 0).all() and ragged.total[3] == 0.0
    s = summarize_trajectory_kl(ragged)
    assert s["reached"] == [6, 5, 4, 3, 2]
    assert sum(e for e, _, _ in s["per_step"]) == pytest.approx(s["total"][0], rel=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda t, q: (np.where(np.arange(3) == 1, np.nan, t), q), r"truth at sample 0, step 0 holds nan at token 1"),
    (lambda t, q: (t, q - 0.1 * (np.indices(q.shape)[:2].sum(axis=0) == 2)), r"prediction at sample 1, step 1 sums "
     r"to 0\.9"),
    (lambda t, q: (t, q[:, :1]), "differ in samples or steps"),
    (lambda t, q: (t, q[..., :2]), "vocabulary sizes differ"),
    (lambda t, q: (t[0], q[0]), r"\(samples, steps, vocabulary\)"),
])
def test_trajectory_kl_rejects_bad_input(make, message):
    t = np.log(np.full((2, 2, 3), 1 / 3))
    q = t.copy()
    t, q = make(t, q)
    with pytest.raises(ValueError, match=message):
        trajectory_kl(t, q)


EOS = 2


def sequences(vocab, m, eos):
    """Every distinct sequence of at most m tokens, ending at the first ``eos`` (when given) or at m tokens."""
    out = set()
    for full in itertools.product(range(vocab), repeat=m):
        cut = full.index(eos) + 1 if eos is not None and eos in full else m
        out.add(full[:cut])
    return sorted(out)


@pytest.mark.parametrize("m, eos", [(2, None), (3, EOS)])
def test_chain_rule_estimator_is_unbiased_for_the_sequence_kl(m, eos):
    vocab, rng = 3, np.random.default_rng(6)
    prefixes = {pre for s in sequences(vocab, m, eos) for pre in (s[:t] for t in range(len(s)))}
    P = {pre: rng.dirichlet(np.ones(vocab)) for pre in prefixes}  # next-token distributions after each prefix
    Q = {pre: rng.dirichlet(np.ones(vocab)) for pre in prefixes}

    def steps(seq, dist):  # (len, vocab) natural-log step distributions along seq
        return np.log(np.stack([dist[seq[:t]] for t in range(len(seq))]))

    seqs = sequences(vocab, m, eos)
    logp = np.array([sum(np.log(P[s[:t]][s[t]]) for t in range(len(s))) for s in seqs])
    logq = np.array([sum(np.log(Q[s[:t]][s[t]]) for t in range(len(s))) for s in seqs])
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-12)
    exact = float(np.sum(np.exp(logp) * (logp - logq)))  # KL(P(y|x) || Q(y|x)) by enumeration
    est = trajectory_kl([steps(s, P) for s in seqs], [steps(s, Q) for s in seqs]).total
    assert float(np.sum(np.exp(logp) * est)) == pytest.approx(exact, abs=1e-12)  # exact expectation

    draws = []  # Monte Carlo: sample y ~ P and average the estimator
    for _ in range(4000):
        seq = ()
        while len(seq) < m and (eos is None or not seq or seq[-1] != eos):
            seq += (int(rng.choice(vocab, p=P[seq])),)
        draws.append(seq)
    mc = trajectory_kl([steps(s, P).astype(np.float32) for s in draws],
                       [steps(s, Q).astype(np.float32) for s in draws]).total
    se = mc.std(ddof=1) / np.sqrt(mc.size)
    assert abs(mc.mean() - exact) < 4 * se
