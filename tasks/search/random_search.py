"""Random search: the baseline GCG and BEAST are measured against at the same budget of target passes.

The same greedy loop as GCG (``gcg.py``) without the gradient: each step proposes ``search_width`` copies of the
current prompt with one uniform position set to a uniform allowed token (``methods.swaps`` over the whole allowed
vocabulary), drops duplicates and candidates that do not re-tokenize, scores the rest by J_λ and keeps the best if it
beats the current prompt (the random-search attack of Andriushchenko et al. 2024 with single-token changes). It starts
from the same random prompt ``x0`` as GCG, so the difference between the two at equal budget is what the gradient adds.
A step costs ``cost_per_candidate`` per candidate and nothing else, so random search evaluates more candidates than GCG
for the same budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .methods import affordable, empty, keep_new_valid, pick, register, swaps
from .objective import Objective


@register("random")
class RandomSearch:
    defaults = {"search_width": 16}

    def minimum(self, obj: Objective, options: dict[str, Any]) -> int:
        """x0 and one candidate."""
        return 2 * obj.cost_per_candidate

    def init(self, obj: Objective, x0: np.ndarray, rng: np.random.Generator, budget: int, options: dict[str, Any]):
        x = np.asarray(x0, dtype=np.int64)[None]
        sc = obj.evaluate(x)
        return {"x": x[0].tolist(), "value": float(sc.value[0])}, x, sc

    def step(self, obj: Objective, state: dict[str, Any], rng: np.random.Generator, budget: int,
             options: dict[str, Any]):
        n = min(options["search_width"], affordable(obj, budget))
        if n < 1:
            return None
        x = np.asarray(state["x"], dtype=np.int64)
        allowed = obj.template.allowed
        cand = keep_new_valid(obj, swaps(rng, x, n, np.broadcast_to(allowed, (len(x), len(allowed)))), seen=x[None])
        if not len(cand):
            return empty(len(x))
        sc = obj.evaluate(cand)
        best, value = pick(cand, sc)
        if value > state["value"]:
            state["x"], state["value"] = best, value
        return cand, sc
