"""Gumbel-tail forecasts of rare behaviours from m sampled queries (Jones et al. 2025, "Forecasting Rare Language
Model Behaviors", §3; arXiv 2502.16797).

Each query x_j ~ D has an elicitation probability ``p_j = P(B | x_j)`` (temperature 1). Its elicitation score is
``psi_j = -log(-log p_j)`` (natural logs; increasing in p; computed from log p so that p ~ 1e-300 keeps its value).
If psi's upper tail is Gumbel-like, its survival function is ``S(psi) ≈ exp(-(psi - mu) / beta)``, so the ranked top
scores lie on a line in log S: with ``psi_(1) >= psi_(2) >= ...`` and the empirical survival ``S_r = r / m``,

    psi_(r) ≈ a + b log(r / m),   r = 1 .. top        (least squares; b = -beta < 0 for a Gumbel tail)

(``positions="rank"``, as in the paper). The r-th largest of m draws has E[log S] = digamma(r) - digamma(m + 1), not
log(r / m): with rank positions the fitted slope is too steep by a factor of about (digamma(top) - digamma(1)) /
log(top) (1.23 for top = 10), which over-forecasts the worst query; ``positions="expected"`` regresses on the
expected log-survivals instead and is unbiased for an exact Gumbel tail (the tests measure both).

Forecasts from the fit (``GumbelFit``):

- worst-query risk at n queries (``forecast_worst``): the score at survival 1/n, ``psi_n = a + b log(1 / n)``, mapped
  back to ``p = exp(-exp(-psi_n))``: the elicitation probability of the largest of n queries (its 1 - 1/n quantile);
- behaviour frequency above a threshold tau (``forecast_frequency``): the share of queries with p >= tau,
  ``S(psi_tau) = exp((psi_tau - a) / b)``, capped at 1 (the paper's "behavior frequency");
- the mean elicitation probability (``tail_mean``), i.e. P_D(B): the empirical mean of the m - top lower queries plus
  the fitted tail's integral ``∫_0^{top/m} exp(-exp(-psi(s))) ds`` in place of the top queries' own values.

The paper's baseline fits a log-normal to the m elicitation probabilities (``fit_lognormal``: log p ~ Normal(mu, sd),
worst-of-n = the 1 - 1/n quantile, capped at 1); it is reported beside the Gumbel forecast.

The estimator ``gumbel_tail`` spends its budget on m = budget queries (one forward pass each) and reports the tail
mean as ``value``, with a bootstrap uncertainty (resampling the m queries, refitting; numpy only, no more passes).
The tail mean is not unbiased: it is convex in the fitted slope, so slope noise biases it up (about 1.8x on exact
Gumbel scores, m = 1000, top 10, expected positions; the tests bound it within 3x); the empirical mean (naive) is in
``details`` beside it;
the forecasts at n queries are in ``details``. Temperature 0 is refused: indicators have no elicitation scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from ..distributions import ProductDistribution
from ..scorer import BehaviourScorer
from .base import Estimate, check_common, need, register, snapshot, spent


@dataclass(frozen=True)
class GumbelFit:
    """``a``, ``b``: intercept and slope of psi on log-survival over the top ``top`` of ``m`` scores; ``positions``:
    the log-survival used for rank r (``rank``: log(r / m); ``expected``: digamma(r) - digamma(m + 1))."""

    a: float
    b: float
    m: int
    top: int
    positions: str = "rank"


@dataclass(frozen=True)
class LogNormalFit:
    """``mu``, ``sd``: mean and standard deviation (ddof 1) of the natural log of the m elicitation probabilities."""

    mu: float
    sd: float
    m: int


def scores_from_log(log_p: np.ndarray) -> np.ndarray:
    """``psi = -log(-log p)`` from natural-log probabilities ``log_p`` (< 0); ``+inf`` where log p = 0 (p = 1)."""
    log_p = np.asarray(log_p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return -np.log(-np.minimum(log_p, 0.0))


def _check_p(p: np.ndarray, top: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or not np.all((p > 0) & (p <= 1)):
        raise ValueError("elicitation probabilities must be a 1-d array of values in (0, 1]")
    if not 2 <= top <= len(p):
        raise ValueError(f"the tail fit needs 2 <= top <= m, got top={top}, m={len(p)}")
    return p


def fit_scores(psi: np.ndarray, top: int = 10, positions: str = "rank") -> GumbelFit:
    """The least-squares line psi_(r) = a + b x_r through the ``top`` largest of the scores ``psi`` (m of them),
    x_r = log(r / m) or digamma(r) - digamma(m + 1) (``positions``; module doc). Raises ``ValueError`` when ``top``
    is not in [2, m], a top score is not finite (p = 1), or ``positions`` is unknown."""
    psi = np.sort(np.asarray(psi, dtype=np.float64))[::-1]
    m = len(psi)
    if not 2 <= top <= m:
        raise ValueError(f"the tail fit needs 2 <= top <= m, got top={top}, m={m}")
    y = psi[:top]
    if not np.all(np.isfinite(y)):
        raise ValueError("a top elicitation probability is 1 (score +inf): the tail cannot be fitted")
    r = np.arange(1, top + 1)
    if positions == "rank":
        x = np.log(r / m)
    elif positions == "expected":
        x = special.digamma(r) - special.digamma(m + 1)
    else:
        raise ValueError(f"positions must be 'rank' or 'expected', got {positions!r}")
    b, a = np.polyfit(x, y, 1)
    return GumbelFit(float(a), float(b), m, top, positions)


def fit_gumbel_tail(p: np.ndarray, top: int = 10, positions: str = "rank") -> GumbelFit:
    """Fit the Gumbel tail (module doc) to elicitation probabilities ``p`` ``(m,)`` in (0, 1]. Raises
    ``ValueError`` for values outside (0, 1], a non-1-d array, ``top`` outside [2, m], or unknown ``positions``."""
    p = _check_p(p, top)
    return fit_scores(scores_from_log(np.log(p)), top, positions)


def forecast_worst(fit: GumbelFit, n: int | float) -> float:
    """Forecast worst-query risk: the elicitation probability at survival 1/n (module doc). ``n`` >= 1 queries."""
    if not n >= 1:
        raise ValueError(f"n must be >= 1, got {n}")
    psi = fit.a + fit.b * math.log(1.0 / n)
    return math.exp(-math.exp(-psi))


def forecast_frequency(fit: GumbelFit, tau: float) -> float:
    """Forecast share of queries whose elicitation probability is at least ``tau`` in (0, 1) (module doc)."""
    if not 0 < tau < 1:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    if fit.b >= 0:
        return 1.0  # no decreasing tail: the fit says nothing small about the share
    return min(1.0, math.exp((-math.log(-math.log(tau)) - fit.a) / fit.b))


def tail_mean(fit: GumbelFit, log_p: np.ndarray, grid: int = 4000, span: float = 80.0) -> float:
    """Mean elicitation probability (module doc): the ``m - top`` lowest queries' own values plus the fitted tail's
    integral over survival s in (0, top/m], by the trapezoid rule in u = log s on ``grid`` points over ``span``
    nats below log(top/m)."""
    lp = np.sort(np.asarray(log_p, dtype=np.float64))[::-1]
    body = float(np.exp(lp[fit.top:]).sum()) / fit.m
    u = np.linspace(math.log(fit.top / fit.m) - span, math.log(fit.top / fit.m), grid)
    psi = fit.a + fit.b * u
    integrand = np.exp(-np.exp(-psi) + u)  # p(psi(s)) ds with ds = s du
    return body + float(np.trapezoid(integrand, u))


def fit_lognormal(p: np.ndarray) -> LogNormalFit:
    """The log-normal baseline: mean and sd of log p over all m probabilities (m >= 2, values in (0, 1])."""
    p = _check_p(p, 2)
    lp = np.log(p)
    return LogNormalFit(float(lp.mean()), float(lp.std(ddof=1)), len(p))


def forecast_worst_lognormal(fit: LogNormalFit, n: int | float) -> float:
    """The log-normal baseline's worst-of-n: its 1 - 1/n quantile, capped at 1."""
    if not n > 1:
        raise ValueError(f"n must be > 1, got {n}")
    return min(1.0, math.exp(fit.mu + fit.sd * float(stats.norm.isf(1.0 / n))))


@register("gumbel_tail")
def gumbel_tail(scorer: BehaviourScorer, dist: ProductDistribution, *, budget: int, seed: int, temperature: int = 1,
                top: int = 10, n: int | None = None, tau: float | None = None, bootstrap: int = 200,
                positions: str = "rank") -> Estimate:
    """Jones et al.'s forecast from m = ``budget`` queries (module doc): ``value`` = the tail mean (P_D(B));
    ``details``: the fits, worst-query risk at ``n`` queries (default 100 m) by the Gumbel tail and the log-normal,
    the share above ``tau`` when given, and the empirical maximum. Raises ``ValueError`` as ``estimate`` does, at
    temperature 0, and for a budget below ``top`` queries."""
    check_common(scorer, dist, budget, temperature)
    if temperature != 1:
        raise ValueError("gumbel_tail needs elicitation probabilities (temperature 1); greedy indicators have none")
    need(budget, max(top, 2), "gumbel_tail", f"a tail fit to the top {top} queries")
    rng = np.random.default_rng(seed)
    before = snapshot(scorer)
    log_p = np.concatenate([scorer.log_prob(dist.sample(min(1024, budget - a), rng)) for a in range(0, budget, 1024)])
    psi = scores_from_log(log_p)
    fit = fit_scores(psi, top, positions)
    value = tail_mean(fit, log_p)
    boots = []
    for _ in range(bootstrap):
        j = rng.integers(budget, size=budget)
        boots.append(tail_mean(fit_scores(psi[j], top, positions), log_p[j]))
    boots = np.array(boots)
    ci = (float(np.quantile(boots, 0.025)), min(1.0, float(np.quantile(boots, 0.975)))) if bootstrap else None
    n = n or 100 * budget
    details = {"gumbel": asdict(fit), "lognormal": asdict(fit_lognormal(np.exp(log_p))), "forecast_n": n,
               "worst_gumbel": forecast_worst(fit, n),
               "worst_lognormal": forecast_worst_lognormal(fit_lognormal(np.exp(log_p)), n),
               "max_observed": float(np.exp(log_p.max())), "empirical_mean": float(np.exp(log_p).mean())}
    if tau is not None:
        details["frequency_above_tau"] = forecast_frequency(fit, tau)
    how = (f"bootstrap over the m queries ({bootstrap} resamples, refit each): stderr = sd of the resampled values, "
           "ci = their 2.5%/97.5% quantiles")
    return Estimate(value=value, stderr=float(boots.std(ddof=1)) if bootstrap > 1 else math.nan, ci=ci,
                    uncertainty=how, passes=spent(scorer, before), budget=budget, seed=seed, estimator="gumbel_tail",
                    temperature=1, samples=budget, settings={"top": top, "n": n, "tau": tau, "bootstrap": bootstrap,
                              "positions": positions},
                    details=details)
