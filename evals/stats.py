"""Aggregates over prompts with bootstrap confidence intervals (``scipy.stats.bootstrap``, percentile method).

Every aggregate the harness reports comes with an interval: prompts are a sample, and a mean KL over 200 prompts is
an estimate. Resampling is over prompts with a fixed seed, so the same per-prompt values always give the same CI.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "median": lambda x, axis=-1: np.median(x, axis=axis),
    "p90": lambda x, axis=-1: np.percentile(x, 90, axis=axis),
    "p99": lambda x, axis=-1: np.percentile(x, 99, axis=axis),
    "max": lambda x, axis=-1: np.max(x, axis=axis),
}


def bootstrap_ci(values: np.ndarray, statistic: str = "mean", *, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of ``statistic`` over ``values`` with a percentile bootstrap CI.

    ``values``: shape ``(n,)``. ``+inf`` is allowed (reverse KL where the target gives a token probability 0): the
    resampled statistics are then ranked without interpolation (``numpy.quantile(method="inverted_cdf")``), so a bound
    is ``inf`` exactly when that share of resamples is. NaN raises ``ValueError`` naming its index: it never reaches an
    aggregate, a gate or a leaderboard.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-d array of per-prompt values, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"per-prompt value {int(np.flatnonzero(np.isnan(x))[0])} is NaN: a metric was computed on "
                         "invalid truth or predictions")
    fn = STATISTICS[statistic]
    with np.errstate(invalid="ignore"):  # percentiles between inf values
        est = float(fn(x))
    if x.size < 2 or np.all(x == x[0]):
        return est, est, est
    if not np.isfinite(x).all():
        rng = np.random.default_rng(seed)
        with np.errstate(invalid="ignore"):
            resampled = fn(x[rng.integers(0, x.size, size=(n_resamples, x.size))], axis=-1)
        alpha = (1 - confidence) / 2
        low, high = np.quantile(resampled, [alpha, 1 - alpha], method="inverted_cdf")
        return est, float(low), float(high)
    res = stats.bootstrap((x,), fn, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", rng=np.random.default_rng(seed))
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(columns: dict[str, np.ndarray], *, seed: int = 0, confidence: float = 0.95,
              n_resamples: int = 2000) -> dict[str, dict[str, list[float]]]:
    """{metric: {statistic: [estimate, ci_low, ci_high]}} for every column and every statistic."""
    return {
        name: {s: list(bootstrap_ci(v, s, confidence=confidence, n_resamples=n_resamples, seed=seed))
               for s in STATISTICS}
        for name, v in columns.items()
    }
