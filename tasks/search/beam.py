"""BEAST-style beam search (Sadasivan et al. 2024, "Fast Adversarial Attacks on Language Models In One GPU Minute"):
gradient-free, proposing each next token by sampling from a language model and keeping a beam by the objective.

Adapted to a fixed template of ``k`` free tokens and the objective J_λ:

- **build** (steps 0 .. k-1): the beam holds ``beam_width`` partial prompts of length t; each is extended by
  ``proposals`` distinct tokens sampled from the proposer's next-token distribution after ``prefix + x_<=t``
  (Gumbel-top-k: sampling without replacement in proportion to p, over allowed tokens), the extensions that
  re-tokenize are scored by J_λ of the partial prompt (at most an equal share of the budget left per position still
  to build, so that a small budget still reaches full length), and the best ``beam_width`` become the beam;
- **refine** (while budget is left, positions 0 .. k-1 in turn): each beam prompt's token at position j is resampled
  the same way given ``prefix + x_<j``; the best ``beam_width`` of the beam and its variants are kept.

The proposer is R when R speaks the target's tokens (BEAST proposes from the attacked model itself; with R = target the
two coincide), otherwise the target (a helper with another tokenizer has no proposals in the target's vocabulary).
A proposal pass of the target is a target pass and counted; the distribution after ``prefix`` alone comes from the
head, computed once (not counted). Only full-length prompts (length k) are results; partial ones steer the beam.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .methods import affordable, empty, keep_new_valid, register
from .objective import Objective


def _sample(rng: np.random.Generator, logp: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """``n`` distinct allowed tokens drawn without replacement with probability proportional to ``exp(logp)``
    (Gumbel-top-k), in draw order."""
    g = logp[allowed] + rng.gumbel(size=len(allowed))
    top = np.argsort(-g, kind="stable")[:n]
    return allowed[top]


@register("beam")
class Beam:
    defaults = {"beam_width": 4, "proposals": 8}

    def minimum(self, obj: Objective, options: dict[str, Any]) -> int:
        """One prompt built to full length: a candidate per position plus a proposal pass for positions 1 .. k-1."""
        k = obj.template.k
        return k * obj.cost_per_candidate + (k - 1) * int(obj.proposer.is_target)

    def init(self, obj: Objective, x0: np.ndarray, rng: np.random.Generator, budget: int, options: dict[str, Any]):
        return {"beam": [[]], "values": [0.0], "t": 0}, *empty(obj.template.k)

    def step(self, obj: Objective, state: dict[str, Any], rng: np.random.Generator, budget: int,
             options: dict[str, Any]):
        k, t = obj.template.k, state["t"]
        parents = np.asarray(state["beam"], dtype=np.int64).reshape(len(state["beam"]), -1)
        building = t < k
        pos = t if building else (t - k) % k
        prop_cost = len(parents) * int(pos > 0 and obj.proposer.is_target)
        n = affordable(obj, budget, prop_cost)
        if building and n >= 1:  # share what is left between the positions still to build, so the beam reaches k
            later = (k - t - 1) * options["beam_width"] * int(obj.proposer.is_target)
            n = max(1, min(n, affordable(obj, budget, prop_cost + later) // (k - t)))
        if n < 1:
            return None
        logp = obj.proposer.next_logprobs(parents[:, :pos])
        cand = []
        for p, row in enumerate(parents):
            for tok in _sample(rng, logp[p], obj.template.allowed, options["proposals"]):
                if building:
                    cand.append([*row.tolist(), int(tok)])
                else:
                    c = row.copy()
                    c[pos] = tok
                    cand.append(c.tolist())
        cand = keep_new_valid(obj, np.asarray(cand, dtype=np.int64), seen=None if building else parents)[:n]
        state["t"] = t + 1
        if not len(cand):
            if building:  # nothing to extend with: try this position again with fresh draws
                state["t"] = t
            return empty(k)
        sc = obj.evaluate(cand)
        pool = list(zip(cand.tolist(), sc.value.tolist(), strict=True))
        if not building:
            pool = list(zip(state["beam"], state["values"], strict=True)) + pool
        order = sorted(range(len(pool)), key=lambda i: (-pool[i][1], i))[: options["beam_width"]]
        state["beam"] = [pool[i][0] for i in order]
        state["values"] = [float(pool[i][1]) for i in order]
        return (cand, sc) if cand.shape[1] == k else empty(k)
