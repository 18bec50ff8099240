"""Greedy coordinate gradient (GCG; Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned
Language Models", Algorithm 1), written here in torch/numpy rather than with ``nanogcg``.

Why not ``nanogcg`` (0.3.0, read before writing this): it wraps the prompt in the tokenizer's chat template
(``apply_chat_template(..., add_generation_prompt=True)``; SmolLM2-Instruct has one, so a base-model prompt "fixed
prefix + k free tokens" with the harness's BOS convention cannot be expressed), optimises one target *string* (not a
prefix-free set of token sequences summed in probability), has no plausibility term, counts steps rather than target
passes, keeps no resumable state, and sets ``torch.use_deterministic_algorithms`` process-wide. Its re-tokenization
filter checks the free string alone, not ``prefix + x`` in context.

One step at the current prompt x (``k`` free tokens):

1. token scores ``(k, V)``: the gradient of log P(B | x) with respect to the one-hot free tokens (one forward and one
   backward: ``BehaviourScorer.log_prob_and_grad``), plus, for λ > 0 and R in the target's tokens, λ/k · log p_R(v |
   prefix, x_<j) (``Objective.gradient_scores``); control tokens and each position's current token excluded;
2. the ``topk`` best tokens per position; ``search_width`` candidates, each x with one uniform position set to a
   uniform one of that position's top-k (``methods.swaps``); duplicates and candidates that do not re-tokenize dropped;
3. all candidates scored by J_λ in batched forwards; the best replaces x if it beats x (greedy: the current prompt's
   objective never decreases).

A step costs 2 target passes (+1 when R is the target and λ > 0) plus ``cost_per_candidate`` per candidate; the last
step evaluates as many candidates as the budget still pays for. Starts from the driver's random prompt ``x0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .methods import affordable, empty, keep_new_valid, pick, register, swaps
from .objective import Objective


def _overhead(obj: Objective) -> int:
    ref = obj.reference
    return 2 + int(obj.lam > 0 and ref.same_tokenizer and ref.is_target and obj.template.k > 1)


@register("gcg")
class GCG:
    defaults = {"search_width": 16, "topk": 32}

    def minimum(self, obj: Objective, options: dict[str, Any]) -> int:
        """x0, then one gradient and one candidate."""
        return 2 * obj.cost_per_candidate + _overhead(obj)

    def init(self, obj: Objective, x0: np.ndarray, rng: np.random.Generator, budget: int, options: dict[str, Any]):
        x = np.asarray(x0, dtype=np.int64)[None]
        sc = obj.evaluate(x)
        return {"x": x[0].tolist(), "value": float(sc.value[0])}, x, sc

    def step(self, obj: Objective, state: dict[str, Any], rng: np.random.Generator, budget: int,
             options: dict[str, Any]):
        n = min(options["search_width"], affordable(obj, budget, _overhead(obj)))
        if n < 1:
            return None
        x = np.asarray(state["x"], dtype=np.int64)
        scores, _ = obj.gradient_scores(x)
        allowed = np.zeros(scores.shape[1], dtype=bool)
        allowed[obj.template.allowed[obj.template.allowed < scores.shape[1]]] = True
        scores[:, ~allowed] = -np.inf
        scores[np.arange(len(x)), x] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, : options["topk"]]
        cand = keep_new_valid(obj, swaps(rng, x, n, top), seen=x[None])
        if not len(cand):
            return empty(len(x))
        sc = obj.evaluate(cand)
        best, value = pick(cand, sc)
        if value > state["value"]:
            state["x"], state["value"] = best, value
        return cand, sc
