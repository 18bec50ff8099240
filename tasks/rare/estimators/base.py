"""What every estimator of P_D(B) shares: the ``Estimate`` it returns, the registry, budget and event checks.

The quantity is ``P_D(B) = E_{x ~ D} f(x)`` for a product distribution D (``tasks.rare.distributions``) and a
behaviour B scored by a ``BehaviourScorer`` (``tasks.rare.scorer``), with the event

- temperature 1: ``f(x) = P(B | x)`` (``scorer.log_prob``, natural log, exact per input);
- temperature 0: ``f(x) = 1[the greedy continuation of x starts with a member of B]`` (``scorer.greedy``).

Budgets are in target passes as the scorer counts them (``Passes``: one forward of one input is one pass, one backward
one more; ``total`` = forward + backward). An estimator never spends more than its budget; what it spent is read off
the scorer's counters (before/after), not computed from a formula. A zero estimate (no sample saw the event) is
reported as ``value = 0.0``, ``log10 = None``, ``zero = True`` with its budget: never floored to a small number here;
how a zero is scored is the scoring side's documented rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..distributions import ProductDistribution
from ..scorer import BehaviourScorer, Passes

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass
class Estimate:
    """An estimate of P_D(B).

    ``value``: the estimate (probability, float, may be 0); ``log10``: its base-10 log, ``None`` when 0; ``stderr``:
    standard error of ``value`` (how it is computed is in ``uncertainty``; ``nan`` when the sample gives no basis);
    ``ci``: a two-sided 95% interval ``(low, high)`` clipped to [0, 1], or ``None`` when the sample gives no basis for
    one (``uncertainty`` says which); ``uncertainty``: how ``stderr`` and ``ci`` were computed; ``passes``: target
    passes spent (forward, backward; ``passes.total`` <= ``budget``); ``budget``; ``seed``; ``zero``: value == 0;
    ``estimator``: its registry name; ``temperature``: 0 or 1; ``samples``: inputs whose f(x) entered the estimate;
    ``settings``: the options used (defaults filled in); ``details``: estimator-specific diagnostics (effective sample
    size, acceptance rate, tail forecasts)."""

    value: float
    stderr: float
    ci: tuple[float, float] | None
    uncertainty: str
    passes: Passes
    budget: int
    seed: int
    estimator: str
    temperature: int
    samples: int
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def zero(self) -> bool:
        return self.value == 0.0

    @property
    def log10(self) -> float | None:
        return math.log10(self.value) if self.value > 0 else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passes"] = {"forward": self.passes.forward, "backward": self.passes.backward, "total": self.passes.total}
        out["ci"] = list(self.ci) if self.ci is not None else None
        out.update(zero=self.zero, log10=self.log10)
        return out


Estimator = Callable[..., Estimate]
REGISTRY: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: register ``fn(scorer, dist, *, budget, seed, temperature, **options) -> Estimate`` as ``name``."""

    def deco(fn: Estimator) -> Estimator:
        if name in REGISTRY:
            raise ValueError(f"estimator {name!r} is registered twice")
        REGISTRY[name] = fn
        return fn

    return deco


def estimate(name: str, scorer: BehaviourScorer, dist: ProductDistribution, *, budget: int, seed: int,
             temperature: int = 1, **options: Any) -> Estimate:
    """Run estimator ``name`` (``REGISTRY``). Raises ``ValueError`` for an unknown name, a budget that is not a
    positive integer, a temperature other than 0 or 1, a distribution whose prefix is not the scorer's, an unknown
    option, or a budget too small for the estimator's first step (each estimator's doc says its minimum)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown estimator {name!r}: use one of {', '.join(sorted(REGISTRY))}")
    check_common(scorer, dist, budget, temperature)
    return REGISTRY[name](scorer, dist, budget=budget, seed=seed, temperature=temperature, **options)


def check_common(scorer: BehaviourScorer, dist: Any, budget: Any, temperature: Any) -> None:
    """The checks every estimator makes (``estimate``'s doc)."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget <= 0:
        raise ValueError(f"budget must be a positive number of target passes, got {budget!r}")
    if temperature not in (0, 1) or isinstance(temperature, bool):
        raise ValueError(f"temperature must be 0 (greedy) or 1, got {temperature!r}")
    if not isinstance(dist, ProductDistribution):
        raise ValueError(f"estimators take a product distribution (prefix + free positions), got {type(dist).__name__}")
    if list(dist.prefix) != list(scorer.prefix):
        raise ValueError(f"distribution {dist.id!r} has prefix {list(dist.prefix)[:8]}..., the scorer "
                         f"{list(scorer.prefix)[:8]}...: build the scorer with the distribution's prefix")


def need(budget: int, minimum: int, name: str, what: str) -> None:
    """Raise ``ValueError`` when ``budget`` is below what estimator ``name`` needs for ``what``."""
    if budget < minimum:
        raise ValueError(f"budget {budget} is too small for {name}: {what} takes {minimum} target passes")


def log_event(scorer: BehaviourScorer, x: np.ndarray, temperature: int) -> np.ndarray:
    """``(n,)`` float64 natural log of f(x) (module doc): log P(B | x), or 0 / -inf for the greedy indicator.
    Costs one forward pass per row."""
    if temperature == 1:
        return scorer.log_prob(x)
    return np.where(scorer.greedy(x), 0.0, -np.inf)


def spent(scorer: BehaviourScorer, before: Passes) -> Passes:
    """Passes the scorer counted since ``before`` (a copy taken at the start)."""
    return Passes(scorer.passes.forward - before.forward, scorer.passes.backward - before.backward)


def snapshot(scorer: BehaviourScorer) -> Passes:
    return Passes(scorer.passes.forward, scorer.passes.backward)


def mean_and_se(log_terms: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation, ddof 1, over sqrt(n)) of ``exp(log_terms)``, computed
    with a common shift so that terms far below 1e-308 keep their ratios. ``nan`` standard error for n < 2."""
    n = len(log_terms)
    top = float(np.max(log_terms)) if n else -np.inf
    if not np.isfinite(top):
        return 0.0, (0.0 if n >= 2 else math.nan)
    y = np.exp(log_terms - top)
    mean = float(y.mean()) * math.exp(top)
    se = float(y.std(ddof=1) / math.sqrt(n)) * math.exp(top) if n >= 2 else math.nan
    return mean, se


def normal_ci(value: float, se: float) -> tuple[float, float] | None:
    """``value +- 1.96 se`` clipped to [0, 1]; ``None`` when ``se`` is not finite."""
    if not math.isfinite(se):
        return None
    return max(0.0, value - Z95 * se), min(1.0, value + Z95 * se)
