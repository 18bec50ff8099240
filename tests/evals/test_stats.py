"""Bootstrap CIs: reproducible with a seed, and equal to a direct resampling computation."""

import numpy as np
import pytest

from evals.stats import bootstrap_ci, summarize


def test_ci_is_seeded_and_brackets_estimate():
    x = np.random.default_rng(0).exponential(size=200)
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    assert a == b
    est, lo, hi = a
    assert est == pytest.approx(x.mean())
    assert lo < est < hi


def test_ci_matches_direct_percentile_bootstrap():
    x = np.random.default_rng(1).normal(2.0, 1.0, size=150)
    est, lo, hi = bootstrap_ci(x, "mean", n_resamples=4000, seed=0)
    rng = np.random.default_rng(123)
    means = x[rng.integers(0, x.size, size=(4000, x.size))].mean(axis=1)
    ref_lo, ref_hi = np.percentile(means, [2.5, 97.5])
    # two independent resampling streams agree to Monte Carlo error (~0.01 here)
    assert lo == pytest.approx(ref_lo, abs=0.03) and hi == pytest.approx(ref_hi, abs=0.03)
    # and the analytic normal interval is close too
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_summarize_all_statistics_and_constant_column():
    out = summarize({"a": np.arange(10.0), "c": np.ones(5)})
    assert set(out["a"]) == {"mean", "median", "p90", "p99", "max"}
    assert out["a"]["max"][0] == 9.0 and out["a"]["median"][0] == 4.5
    assert out["c"]["mean"] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))


def test_infinite_values_keep_an_honest_interval_and_nan_is_refused():
    import numpy as np
    import pytest

    from evals.stats import bootstrap_ci

    x = np.array([1.0] * 99 + [np.inf])
    est, low, high = bootstrap_ci(x, "mean", seed=0)
    # a resample misses the one inf with probability (99/100)^100 = 0.366 > 0.025, so the low bound is finite
    assert est == np.inf and low == 1.0 and high == np.inf
    with pytest.raises(ValueError, match="per-prompt value 3 is NaN"):
        bootstrap_ci(np.array([1.0, 2.0, 3.0, np.nan]))
