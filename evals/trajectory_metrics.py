"""Metrics of trajectory suites: how well a predictor predicts the probability of whole continuations.

A question is a prompt ``x`` and a continuation ``y = y_1 .. y_m``; the truth is ``log P(y | x) = sum_t log P(y_t |
x, y_<t)`` (natural log, ``tasks.continuations``), the prediction ``log Q(y | x)``. All functions are pure numpy,
vectorized over questions, computed in float64; errors raise ``ValueError`` naming the shape or index.

- ``log_errors``: per question, the error ``log Q - log P`` (positive: the prediction over-estimates), in nats and in
  log10 ("orders of magnitude": nats / ln 10), absolute, and per token (/ m).
- ``aggregate``: mean absolute log10 error, share of questions within 10x (``|log10 error| <= 1``), mean signed log10
  error and mean absolute nats per token, each with a seeded percentile bootstrap CI over questions
  (``evals.stats.bootstrap_ci``), and the calibration fit with a paired bootstrap CI.
- ``calibration_fit``: least squares of true on predicted log10 P (slope 1, intercept 0 for a calibrated predictor,
  checked against ``scipy.stats.linregress``); ``calibration_plot`` draws it (PNG).
- ``trajectory_kl``: along target samples ``y ~ P(. | x)``, the next-token ``KL(P(. | x, y_<t) || Q(. | x, y_<t))``
  at every step, and its sum over steps. By the chain rule of KL (Cover & Thomas, *Elements of Information Theory*,
  Thm 2.5.3), ``E_{y ~ P} sum_t KL(P(. | x, y_<t) || Q(. | x, y_<t)) = KL(P(y_1..y_m | x) || Q(y_1..y_m | x))``: the
  per-sample sum is an unbiased Monte Carlo estimate of the sequence KL (and has lower variance than the naive
  ``log P(y|x) - log Q(y|x)``). Samples that stop early (EOS) contribute 0 after their end, which is the chain rule for
  sequences of varying length. ``summarize_trajectory_kl`` gives the mean over samples with bootstrap CIs, per step
  and summed (the per-step means add up to the summed mean).

Exactness: a perfect prediction scores exactly 0 (every error is ``x - x``; every KL term ``p * (a - a)``).
Left out: step-wise distribution predictions given as sparse next-token rows (densify them first, ``predictors.format``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evals.stats import bootstrap_ci
from tasks.io import atomic_write

LN10 = float(np.log(10.0))
CHUNK_BYTES = 32 << 20  # float64 scratch per chunk of trajectory_kl (a few arrays of this size at once)
NORM_TOL = 1e-3  # |sum_v exp(logp) - 1| allowed for a step distribution


def _vector(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-d (one value per question), got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] is {a[i]}: log-probabilities of questions must be finite")
    return a


def log_errors(true_logp: np.ndarray, pred_logp: np.ndarray, n_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Per-question errors of predicted log-probabilities; each array has shape ``(n,)``, float64.

    ``true_logp``, ``pred_logp``: ``(n,)`` log P(y | x) and log Q(y | x) in nats (finite). ``n_tokens``: ``(n,)``
    continuation lengths (>= 1). Returns ``error_nats = pred - true`` (positive: over-estimate), ``error_log10 =
    error_nats / ln 10``, ``abs_error_nats``, ``abs_error_log10``, ``error_nats_per_token = error_nats / n_tokens``
    and ``abs_error_nats_per_token``. A perfect prediction gives exact zeros.

    >>> log_errors(np.array([-2.0]), np.array([-2.0 + np.log(10)]), np.array([4]))["error_log10"]
    array([1.])
    """
    t, q = _vector(true_logp, "true_logp"), _vector(pred_logp, "pred_logp")
    m = np.asarray(n_tokens)
    if t.shape != q.shape or m.shape != t.shape:
        raise ValueError(f"true_logp {t.shape}, pred_logp {q.shape} and n_tokens {m.shape} must have the same shape")
    if m.size and (m.min() < 1 or not np.issubdtype(m.dtype, np.integer)):
        raise ValueError("n_tokens must be integer token counts >= 1")
    err = q - t
    log10 = err / LN10
    per_token = err / m
    return {"error_nats": err, "error_log10": log10, "abs_error_nats": np.abs(err), "abs_error_log10": np.abs(log10),
            "error_nats_per_token": per_token, "abs_error_nats_per_token": np.abs(per_token)}


def calibration_fit(pred_log10: np.ndarray, true_log10: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line ``true = slope * pred + intercept`` (log10 P, ``(n,)`` each).

    slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2), intercept = mean y - slope mean x (as
    ``scipy.stats.linregress``). A calibrated predictor has slope 1 and intercept 0 (exactly, for a perfect one).
    Needs two distinct predicted values.
    """
    x, y = _vector(pred_log10, "pred_log10"), _vector(true_log10, "true_log10")
    if x.shape != y.shape:
        raise ValueError(f"pred_log10 {x.shape} and true_log10 {y.shape} must have the same shape")
    slope, intercept = _fit(x[None], y[None])
    if not np.isfinite(slope[0]):
        raise ValueError("the calibration fit needs at least two distinct predicted values")
    return float(slope[0]), float(intercept[0])


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of each row of y on the same row of x, ``(r, n)`` -> slopes and intercepts ``(r,)`` (NaN slope
    where a row of x is constant)."""
    mx, my = x.mean(axis=1), y.mean(axis=1)
    dx, dy = x - mx[:, None], y - my[:, None]
    sxx = np.einsum("ij,ij->i", dx, dx)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.einsum("ij,ij->i", dx, dy) / sxx
    slope[sxx == 0] = np.nan
    return slope, my - slope * mx


def aggregate(true_logp: np.ndarray, pred_logp: np.ndarray, n_tokens: np.ndarray, *, seed: int = 0,
              confidence: float = 0.95, n_resamples: int = 2000) -> dict[str, list[float]]:
    """Aggregates over questions, each ``[estimate, ci_low, ci_high]`` (percentile bootstrap over questions, seeded).

    Inputs as ``log_errors``. Keys: ``mean_abs_log10_error`` (orders of magnitude), ``within_10x_share`` (share of
    questions with ``|log10 error| <= 1``), ``mean_log10_error`` (signed: > 0 over-estimates),
    ``mean_abs_nats_per_token``, and ``calibration_slope`` / ``calibration_intercept`` (``calibration_fit`` of true
    on predicted log10 P; resampled in pairs; NaN when every predicted value is the same).
    """
    e = log_errors(true_logp, pred_logp, n_tokens)
    kw = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    out = {
        "mean_abs_log10_error": list(bootstrap_ci(e["abs_error_log10"], **kw)),
        "within_10x_share": list(bootstrap_ci((e["abs_error_log10"] <= 1.0).astype(np.float64), **kw)),
        "mean_log10_error": list(bootstrap_ci(e["error_log10"], **kw)),
        "mean_abs_nats_per_token": list(bootstrap_ci(e["abs_error_nats_per_token"], **kw)),
    }
    x, y = np.asarray(pred_logp, np.float64) / LN10, np.asarray(true_logp, np.float64) / LN10
    out.update(zip(("calibration_slope", "calibration_intercept"), _fit_ci(x, y, **kw), strict=True))
    return out


def _fit_ci(x: np.ndarray, y: np.ndarray, *, confidence: float, n_resamples: int,
            seed: int) -> tuple[list[float], list[float]]:
    """Calibration slope and intercept with paired percentile bootstrap CIs (resamples with constant x dropped)."""
    slope, intercept = (float(v[0]) for v in _fit(x[None], y[None]))
    if not np.isfinite(slope):
        return [np.nan] * 3, [np.nan] * 3
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    slopes, intercepts = [], []
    for start in range(0, n_resamples, 256):  # (256, n) indices at a time
        idx = rng.integers(0, x.size, size=(min(256, n_resamples - start), x.size))
        s, i = _fit(x[idx], y[idx])
        slopes.append(s[np.isfinite(s)])
        intercepts.append(i[np.isfinite(s)])
    s, i = np.concatenate(slopes), np.concatenate(intercepts)
    if s.size == 0:
        return [slope, slope, slope], [intercept, intercept, intercept]
    qs = [alpha, 1 - alpha]
    return [slope, *map(float, np.quantile(s, qs))], [intercept, *map(float, np.quantile(i, qs))]


def calibration_plot(pred_log10: np.ndarray, true_log10: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Scatter of predicted against true log10 P with the line y = x and the fitted line; written to ``path`` (PNG,
    atomically). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    x, y = _vector(pred_log10, "pred_log10"), _vector(true_log10, "true_log10")
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"pred_log10 {x.shape} and true_log10 {y.shape} must have the same non-empty shape")
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(x, y, s=10, alpha=0.5, linewidths=0, label="questions")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    lo, hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x (calibrated)")
    if np.unique(x).size > 1:
        slope, intercept = calibration_fit(x, y)
        ax.plot([lo, hi], [slope * lo + intercept, slope * hi + intercept], color="C3", lw=1.5,
                label=f"fit: slope {slope:.3f}, intercept {intercept:.3f}")
    ax.set_xlabel("predicted log10 P")
    ax.set_ylabel("true log10 P")
    ax.set_title(title or "Calibration of whole-continuation probabilities")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return Path(path)


class TrajectoryKL(NamedTuple):
    """``trajectory_kl``'s result: ``per_step`` (n, m) float64 nats (0 after a sample's end), ``total`` (n,) the sum
    over steps (the per-sample MC estimate of the sequence KL), ``mask`` (n, m) bool (the steps each sample reached)."""

    per_step: np.ndarray
    total: np.ndarray
    mask: np.ndarray


def _pieces(a: np.ndarray | Sequence[np.ndarray], lengths: Sequence[int] | None,
            name: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The per-sample (len_i, V) arrays of a (n, m, V) array (with optional lengths) or a list of 2-d arrays."""
    if isinstance(a, np.ndarray):
        if a.ndim != 3:
            raise ValueError(f"{name} must be (samples, steps, vocabulary) or a list of (steps, vocabulary); got shape "
                             f"{a.shape}")
        n, m = a.shape[:2]
        lens = np.full(n, m, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        if lens.shape != (n,) or (lens.size and (lens.min() < 0 or lens.max() > m)):
            raise ValueError(f"lengths must be ({n},) values in [0, {m}], got {lens.tolist()[:8]}")
        if lengths is None:  # one piece: chunks then span samples without a copy
            return [a.reshape(n * m, a.shape[2])], lens
        return [a[i, :k] for i, k in enumerate(lens)], lens
    pieces = [np.asarray(x) for x in a]
    if any(x.ndim != 2 for x in pieces):
        raise ValueError(f"each of {name} must be a (steps, vocabulary) array")
    lens = np.array([len(x) for x in pieces], dtype=np.int64)
    if lengths is not None and not np.array_equal(lens, np.asarray(lengths)):
        raise ValueError("lengths disagree with the lengths of the arrays given")
    return pieces, lens


def _chunks(pieces: list[np.ndarray], rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Consecutive blocks of at most ``rows`` rows over the concatenation of ``pieces``, as (start row, block)."""
    buf, size, start = [], 0, 0
    for x in pieces:
        at = 0
        while at < len(x):
            take = min(rows - size, len(x) - at)
            buf.append(x[at: at + take])
            size, at = size + take, at + take
            if size == rows:
                yield start, buf[0] if len(buf) == 1 else np.concatenate(buf)
                start, buf, size = start + rows, [], 0
    if size:
        yield start, buf[0] if len(buf) == 1 else np.concatenate(buf)


def trajectory_kl(true_step_logp: np.ndarray | Sequence[np.ndarray], pred_step_logp: np.ndarray | Sequence[np.ndarray],
                  *, lengths: Sequence[int] | None = None, tol: float = NORM_TOL,
                  chunk_bytes: int = CHUNK_BYTES) -> TrajectoryKL:
    """Next-token KL(P || Q) at every step along target samples, and its sum over steps (nats).

    ``true_step_logp``, ``pred_step_logp``: natural-log next-token distributions of the target and the prediction at
    every step of each sample, ``(n, m, V)`` (float32 is fine) or a list of ``(m_i, V)`` arrays (samples stopped at
    EOS); for a padded ``(n, m, V)`` array, ``lengths`` gives each sample's steps (rows beyond are ignored).
    ``KL_t = sum_v p_v (log p_v - log q_v)`` with ``0 log 0 = 0``; ``+inf`` where Q gives 0 (``-inf``) to a token P
    gives mass. NaN or ``+inf`` inputs, or rows whose probabilities do not sum to 1 within ``tol``, raise
    ``ValueError`` naming (sample, step). Rounding of float32 inputs can give KL of order -1e-7; it is not clipped.
    Memory: rows are converted to float64 in chunks of about ``chunk_bytes``.
    """
    tp, lens = _pieces(true_step_logp, lengths, "true_step_logp")
    qp, qlens = _pieces(pred_step_logp, lengths, "pred_step_logp")
    if not np.array_equal(lens, qlens):
        raise ValueError(f"truth and prediction differ in samples or steps: {lens.tolist()[:8]} vs "
                         f"{qlens.tolist()[:8]}")
    vocab = {x.shape[1] for x in tp + qp if len(x)}
    if len(vocab) > 1:
        raise ValueError(f"vocabulary sizes differ: {sorted(vocab)}; every step row must cover the full vocabulary")
    n, m = lens.size, int(lens.max()) if lens.size else 0
    mask = np.arange(m) < lens[:, None]
    flat = np.empty(int(lens.sum()))
    ends = np.cumsum(lens)

    def where(row: int) -> str:  # flat row -> "sample i, step t"
        i = int(np.searchsorted(ends, row, side="right"))
        return f"sample {i}, step {row - (ends[i] - lens[i])}"

    rows = max(1, chunk_bytes // (8 * max(vocab or {1})))
    for (start, t), (_, q) in zip(_chunks(tp, rows), _chunks(qp, rows), strict=True):
        flat[start: start + len(t)] = _step_kl(t, q, start, tol, where)
    per_step = np.zeros((n, m))
    per_step[mask] = flat
    return TrajectoryKL(per_step, per_step.sum(axis=1), mask)


def _step_kl(t: np.ndarray, q: np.ndarray, start: int, tol: float, where: Callable[[int], str]) -> np.ndarray:
    """KL per row of one chunk (float64), after checking its rows."""
    a, b = t.astype(np.float64), q.astype(np.float64)  # copies, so b may be overwritten below
    for name, x in (("truth", a), ("prediction", b)):
        bad = np.isnan(x) | (x == np.inf)
        if bad.any():
            r, v = np.argwhere(bad)[0]
            raise ValueError(f"{name} at {where(start + r)} holds {x[r, v]} at token {v}: log-probabilities must be "
                             "finite or -inf")
    p = np.exp(a)
    for name, mass in (("truth", p.sum(axis=1)), ("prediction", np.exp(b).sum(axis=1))):
        off = np.abs(mass - 1.0) > tol
        if off.any():
            r = int(np.flatnonzero(off)[0])
            raise ValueError(f"{name} at {where(start + r)} sums to {mass[r]:.6f}, not 1 (tolerance {tol}): give "
                             "normalized natural-log probabilities")
    with np.errstate(invalid="ignore"):  # -inf - -inf where both give 0
        term = np.subtract(a, b, out=b)  # in place: b is a private copy (astype)
        term *= p  # a == b gives exactly 0
    term[p == 0] = 0.0  # 0 log 0 = 0, whatever Q says
    return term.sum(axis=1)


def summarize_trajectory_kl(result: TrajectoryKL, *, seed: int = 0, confidence: float = 0.95,
                            n_resamples: int = 2000) -> dict[str, list]:
    """Mean over samples with a bootstrap CI (``evals.stats.bootstrap_ci``, seeded): ``total`` as ``[estimate, low,
    high]`` (the MC estimate of the sequence KL), ``per_step`` as one such triple per step (samples that ended count
    0, so the per-step means add up to the total's), and ``reached``: how many samples reached each step."""
    kw = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    return {"total": list(bootstrap_ci(result.total, **kw)),
            "per_step": [list(bootstrap_ci(result.per_step[:, t], **kw)) for t in range(result.per_step.shape[1])],
            "reached": result.mask.sum(axis=0).tolist()}
