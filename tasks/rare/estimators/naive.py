"""Naive Monte Carlo: ``x_1 .. x_n ~ D`` independently, ``P_hat = (1/n) sum_i f(x_i)`` (Wu & Hilton 2024, §4.1).

Unbiased. Budget: one forward pass per sample, so ``n = budget``. Uncertainty:

- temperature 1 (f = P(B | x) in [0, 1]): standard error = sample standard deviation (ddof 1) / sqrt(n); 95% interval
  ``value +- 1.96 se`` clipped to [0, 1] (normal approximation; ``None`` for n = 1);
- temperature 0 (f an indicator, hits ~ Binomial(n, P)): standard error sqrt(P_hat (1 - P_hat) / n) and the exact
  Clopper-Pearson 95% interval, which stays informative at zero hits: ``(0, 1 - 0.025^(1/n))`` (about 3.7 / n).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..distributions import ProductDistribution
from ..scorer import BehaviourScorer
from .base import Estimate, check_common, log_event, mean_and_se, normal_ci, register, snapshot, spent


def clopper_pearson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``hits`` successes in ``n`` trials (Clopper & Pearson 1934)."""
    a = (1 - level) / 2
    lo = 0.0 if hits == 0 else float(stats.beta.ppf(a, hits, n - hits + 1))
    hi = 1.0 if hits == n else float(stats.beta.ppf(1 - a, hits + 1, n - hits))
    return lo, hi


@register("naive")
def naive(scorer: BehaviourScorer, dist: ProductDistribution, *, budget: int, seed: int, temperature: int = 1,
          batch: int = 1024) -> Estimate:
    """Naive Monte Carlo with ``budget`` samples (module doc), drawn ``batch`` at a time from
    ``np.random.default_rng(seed)``. Raises ``ValueError`` as ``estimate`` does (minimum budget: 1)."""
    check_common(scorer, dist, budget, temperature)
    rng = np.random.default_rng(seed)
    before = snapshot(scorer)
    logs = []
    for a in range(0, budget, batch):
        logs.append(log_event(scorer, dist.sample(min(batch, budget - a), rng), temperature))
    log_f = np.concatenate(logs)
    n = len(log_f)
    if temperature == 1:
        value, se = mean_and_se(log_f)
        ci, how = normal_ci(value, se), "stderr: sample sd (ddof 1) / sqrt(n); ci: value +- 1.96 stderr, clipped"
    else:
        hits = int(np.isfinite(log_f).sum())
        value = hits / n
        se = math.sqrt(value * (1 - value) / n)
        ci, how = clopper_pearson(hits, n), "stderr: binomial sqrt(p(1-p)/n); ci: exact Clopper-Pearson 95%"
    return Estimate(value=value, stderr=se, ci=ci, uncertainty=how, passes=spent(scorer, before), budget=budget,
                    seed=seed, estimator="naive", temperature=temperature, samples=n, settings={"batch": batch},
                    details={"hits": int((log_f > -np.inf).sum()) if temperature == 0 else None})
