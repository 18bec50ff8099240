"""Exact ground truth of P_D(B) where it can be had: enumerating a product distribution's support, or a suite's mean.

For a product distribution D (``tasks.rare.distributions.ProductDistribution``) with a small support, every input x
is evaluated once, the fixed prefix's KV cache reused (``tasks.rare.scorer.PrefixRunner``: an input costs its k free
positions, plus a behaviour's tokens), and the exact expectation is a weighted sum in float64:

- ``token_marginals``: for every token v at once, ``P_D(v) = sum_x p(x) softmax(z(x))_v`` (temperature 1) and
  ``P_D(argmax z(x) = v) = sum_x p(x) 1[argmax = v]`` (temperature 0): one pass per input gives the single-token
  behaviours of the whole vocabulary;
- ``behaviour_probability``: ``sum_x p(x) P(B | x)`` (or the greedy indicator) for a multi-token behaviour
  (``BehaviourScorer``).

Exact up to float32 model arithmetic (the softmax is taken in float32, sums in float64). ``MAX_SUPPORT`` bounds what is
enumerated (a larger support is refused, naming its size): beyond it P_D(B) is estimated (``tasks.rare.estimators``).
Suite distributions are exact means over their prompts, the next-token case straight from the suite's truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .distributions import DistributionError, ProductDistribution
from .scorer import BehaviourScorer, Passes, PrefixRunner

MAX_SUPPORT = 1 << 20  # inputs enumerated at most (about 3 hours of SmolLM2-135M on 2 CPU cores at k = 3)


@dataclass
class Marginals:
    """``p1`` (V,) float64: P_D(first token = v) at temperature 1; ``p0`` (V,) float64: P_D(greedy token = v);
    ``passes``: forward passes spent (one per input)."""

    p1: np.ndarray
    p0: np.ndarray
    passes: Passes


def check_support(dist: ProductDistribution, limit: int = MAX_SUPPORT) -> None:
    """Raise ``DistributionError`` when ``dist``'s support is too large to enumerate (naming the size and limit)."""
    if dist.support_size > limit:
        raise DistributionError(f"distribution {dist.id!r} has {dist.support_size:,} inputs, more than the "
                                f"{limit:,} that exact enumeration takes: use fewer free positions or smaller "
                                "token lists, or estimate it (`logitpred rare estimate`)")


def token_marginals(model: Any, dist: ProductDistribution, *, bos_ids: list[int], batch_size: int = 256,
                    on_progress: Callable[[int], None] | None = None) -> Marginals:
    """Exact next-token marginals of ``dist`` under ``model`` (module doc). Raises ``DistributionError`` for a support
    over ``MAX_SUPPORT``."""
    import torch

    check_support(dist)
    runner = PrefixRunner(model, list(bos_ids) + list(dist.prefix))
    p1 = p0 = None
    passes = Passes()
    for x, lp in dist.enumerate(batch_size):
        logits = runner.logits(torch.as_tensor(x), keep=1)[:, -1].float()
        w = torch.as_tensor(np.exp(lp))
        probs = torch.softmax(logits, dim=-1).double()
        part1 = (w[:, None] * probs).sum(dim=0).numpy()
        part0 = np.bincount(logits.argmax(dim=-1).numpy(), weights=w.numpy(), minlength=probs.shape[1])
        p1, p0 = (part1, part0) if p1 is None else (p1 + part1, p0 + part0)
        passes.forward += len(x)
        if on_progress:
            on_progress(len(x))
    return Marginals(p1, p0, passes)


def behaviour_probabilities(scorer: BehaviourScorer, dist: ProductDistribution, *,
                            on_progress: Callable[[int], None] | None = None) -> dict[int, float]:
    """Exact ``{1: P_D(B) at temperature 1, 0: at temperature 0}``: ``sum_x p(x) P(B | x)``, and the probability mass
    of inputs whose greedy continuation starts with a member; both from one pass per input (counted on
    ``scorer.passes``). Raises ``DistributionError`` for a support over ``MAX_SUPPORT``."""
    check_support(dist)
    t1 = t0 = 0.0
    for x, lp in dist.enumerate(scorer.batch_size * 8):
        logp, hit = scorer.evaluate(x)
        t1 += float(np.exp(lp + logp).sum())
        t0 += float(np.exp(lp)[hit].sum())
        if on_progress:
            on_progress(len(x))
    return {1: t1, 0: t0}


def behaviour_probability(scorer: BehaviourScorer, dist: ProductDistribution, *, temperature: float = 1.0,
                          on_progress: Callable[[int], None] | None = None) -> float:
    """``behaviour_probabilities`` at one temperature (0 or 1). Raises ``ValueError`` for another temperature."""
    if temperature not in (0, 1):
        raise ValueError(f"temperature must be 0 (greedy) or 1, got {temperature}")
    return behaviour_probabilities(scorer, dist, on_progress=on_progress)[int(temperature)]


def pick_tokens(p: np.ndarray, n: int, lo: float, hi: float, *, exclude: set[int] = frozenset()) -> list[int]:
    """``n`` distinct tokens whose probabilities in ``p`` lie nearest to ``n`` log-uniformly spaced targets in
    [``lo``, ``hi``] (each target takes the nearest unused token in log10 distance). Raises ``ValueError`` when fewer
    than ``n`` tokens have a probability in range."""
    ok = np.flatnonzero((p >= lo) & (p <= hi))
    ok = np.array([t for t in ok.tolist() if t not in exclude], dtype=np.int64)
    if len(ok) < n:
        raise ValueError(f"only {len(ok)} tokens have a probability in [{lo:g}, {hi:g}]; {n} asked for")
    logs = np.log10(p[ok])
    chosen: list[int] = []
    for target in np.linspace(np.log10(lo), np.log10(hi), n):
        order = np.argsort(np.abs(logs - target), kind="stable")
        chosen.append(int(next(ok[i] for i in order if int(ok[i]) not in chosen)))
    return chosen
