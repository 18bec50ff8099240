"""Estimators of P_D(B) that run the target (issue 13 part 3): the lab's white-box tools, not predictors.

``estimate(name, scorer, dist, *, budget, seed, temperature, **options) -> Estimate`` runs a registered estimator:

- ``naive``: Monte Carlo over D (``naive.py``);
- ``itgis``: independent token gradient importance sampling (``itgis.py``, Wu & Hilton 2024);
- ``mhis``: Metropolis-Hastings importance sampling (``mhis.py``, Wu & Hilton 2024; consistent, not unbiased);
- ``gumbel_tail``: Jones et al. 2025's Gumbel-tail forecast from m queries (``gumbel.py``; pure fit functions too);
- ``search_is``: a prompt search's found inputs as a fixed mixture proposal, exact weights (``search_is.py``, issue 14).

Budgets are target passes (forward + backward, as ``BehaviourScorer.passes`` counts them); ``base.py`` has the
``Estimate`` record, the registry and the event definitions at temperatures 1 and 0.
"""

from . import gumbel, itgis, mhis, naive, search_is  # noqa: F401  (registers the estimators)
from .base import REGISTRY, Estimate, estimate, register
from .gumbel import (
    GumbelFit,
    LogNormalFit,
    fit_gumbel_tail,
    fit_lognormal,
    fit_scores,
    forecast_frequency,
    forecast_worst,
    forecast_worst_lognormal,
    scores_from_log,
    tail_mean,
)

__all__ = ["REGISTRY", "Estimate", "GumbelFit", "LogNormalFit", "estimate", "fit_gumbel_tail", "fit_lognormal",
           "fit_scores", "forecast_frequency", "forecast_worst", "forecast_worst_lognormal", "register",
           "scores_from_log", "tail_mean"]
