"""Search as an importance-sampling proposal (issue 14 part 5): find high-``p(x) P(B | x)`` inputs inside D's support
with a prompt search, then sample from a fixed mixture around them with exact weights.

Two phases, both paid from one budget of target passes (``BehaviourScorer.passes``):

1. **Search** (``search_share`` of the budget, default 1/4): ``restarts`` greedy coordinate-gradient chains (GCG,
   Zou et al. 2023, Algorithm 1, as ``tasks/search/gcg.py``; ``method="random"`` for random single-token swaps as
   ``tasks/search/random_search.py``) started from draws of D, maximising ``s(x) = log P(B | x) + log p_D(x)`` over
   D's support: the log of ``p_D(x) f(x)``, the unnormalised zero-variance proposal at temperature 1 (at temperature 0
   ``log P(B | x)`` is the smooth surrogate of the indicator, as ITGIS uses it, and inputs whose greedy continuation is
   in B rank first). Token scores per position are the gradient of ``log P(B | x)`` with respect to the one-hot input
   (``scorer.log_prob_grad_greedy``) plus ``log p_i(v)`` (the prior's own term, exact), restricted to position i's
   support ``dist.ids[i]``; candidates are ``search_width`` single-token swaps (``tasks.search.methods.swaps``) among
   each position's ``topk`` best, scored in one batched forward (``scorer.evaluate``); the best replaces the chain's
   input when it improves. A step costs 2 passes for the gradient (forward + backward; taken once per chain input,
   reused while the input stays) plus 1 per new candidate (inputs evaluated before are not paid again). The chains
   round-robin while the search budget pays for a step; a chain whose step finds nothing new and no better input (a
   local maximum whose sampled neighbours are all known) restarts from a fresh draw of D, so the search budget is
   spent (``STALLS`` steps in a row that evaluate nothing new end the search: a small support is exhausted).
   Why not ``tasks.search.run_search`` itself: its template filters *texts* that re-tokenize and its plausibility term
   is a reference model R, while D's inputs are token ids with an exact prior (here ``log p_D`` plays R's part with
   λ = 1 and no per-token division); it also needs a loaded ``Target`` and writes a state file. The step is the same.
2. **Importance sampling** (the rest, one forward per sample): the ``elite`` best distinct inputs the search evaluated
   (by s, greedy hits first at temperature 0) define the proposal, fixed before any sample is drawn,

       q(x) = α p_D(x) + (1 - α) (1/m) sum_e prod_i [ρ 1(x_i = e_i) + (1 - ρ) p_i(x_i)]     (shape "kernel")

   (each elite e a product component concentrated on its own tokens; m elites) or, with ``shape="histogram"``, one
   product component ``prod_i [ρ h_i(x_i) + (1 - ρ) p_i(x_i)]`` with ``h_i`` the elites' token histogram at position
   i. Both densities are exact and computable; ``q >= α p_D`` everywhere, so ``q`` covers D's support and every weight
   ``p_D(x) / q(x) <= 1 / α``. Estimator: ``P_hat = (1/N) sum_n w(x_n) f(x_n)``, ``x_n ~ q`` i.i.d.,
   ``w = p_D / q``: unbiased, since q depends only on the search, which is independent of the samples. With no
   elite (a budget too small to search) q = D and this is naive Monte Carlo on the N samples.

Minimum budget: one search step of every restart (``restarts * (2 + 1)`` passes) and one sample: ``ValueError``
below it, as ``estimate`` does. Uncertainty: standard error = sample sd (ddof 1) of the N terms w f over sqrt(N); 95%
interval ``value +- 1.96 se`` clipped to [0, 1]; ``ci = None`` when every term is zero (no sample saw the event, a
zero estimate reported as zero). ``details``: what the search found (best s, best log P(B | x), greedy hits among the
inputs it evaluated, the elites), the effective sample size of the weights and the hits among the samples.

What it leaves out: the search's own evaluations never enter the estimate (using them would need the search's
selection to be modelled); the proposal is not adapted while sampling (ITGIS adapts; a second round would need its
own accounting).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..distributions import ProductDistribution
from ..scorer import BehaviourScorer
from .base import Estimate, check_common, log_event, mean_and_se, need, normal_ci, register, snapshot, spent

HIT_BONUS = 1e6  # at temperature 0, a greedy hit outranks any non-hit in the search score
STALLS = 50  # consecutive steps that evaluate nothing new end the search (a small support is exhausted)


class _Search:
    """The search phase (module doc, step 1) over D's support: chains, the inputs evaluated and their scores."""

    def __init__(self, scorer: BehaviourScorer, dist: ProductDistribution, temperature: int,
                 rng: np.random.Generator, method: str, width: int, topk: int) -> None:
        self.scorer, self.dist, self.temperature, self.rng = scorer, dist, temperature, rng
        self.method, self.width, self.topk = method, width, topk
        self.logp = [np.log(p) for p in dist.probs]
        self.pos = [{int(v): j for j, v in enumerate(t.tolist())} for t in dist.ids]
        self.seen: dict[tuple[int, ...], tuple[float, float, bool]] = {}  # x -> (score s, log P(B | x), hit)
        self.restarts = 0  # chains restarted from a local maximum

    def log_prior(self, x: np.ndarray) -> np.ndarray:
        return np.sum([self.logp[i][[self.pos[i][int(v)] for v in x[:, i]]] for i in range(self.dist.k)], axis=0)

    def remember(self, x: np.ndarray, lp: np.ndarray, hit: np.ndarray) -> np.ndarray:
        s = lp + self.log_prior(x) + (HIT_BONUS * hit if self.temperature == 0 else 0.0)
        for row, si, li, hi in zip(x.tolist(), s.tolist(), lp.tolist(), hit.tolist(), strict=True):
            self.seen[tuple(row)] = (float(si), float(li), bool(hi))
        return s

    def choices(self, x: np.ndarray, grad: np.ndarray | None) -> np.ndarray:
        """``(k, c)`` candidate tokens per position: the ``topk`` best by gradient + log prior (gcg), or uniform
        draws from the support (random); the current token excluded."""
        k = self.dist.k
        c = max(1, min(self.topk, min(len(t) for t in self.dist.ids) - 1))
        out = np.empty((k, c), dtype=np.int64)
        for i, t in enumerate(self.dist.ids):
            cur = self.pos[i][int(x[i])]
            if grad is None:
                idx = self.rng.choice(np.delete(np.arange(len(t)), cur), size=c, replace=c > len(t) - 1)
            else:
                sc = grad[i, t].astype(np.float64) + self.logp[i]
                sc[cur] = -np.inf
                idx = np.argsort(-sc, kind="stable")[:c]
            out[i] = t[idx]
        return out

    def step(self, chain: dict[str, Any], left: int) -> int | None:
        """One step of ``chain`` within ``left`` passes; returns the passes it spent (0 when every candidate had
        been evaluated before and the gradient was known), ``None`` when the step is not affordable."""
        from tasks.search.methods import swaps

        x = chain["x"]
        fresh = self.method == "gcg" and chain.get("grad") is None  # a gradient at x still to take
        grad_cost = 2 * int(fresh)
        if left < grad_cost + 1:
            return None
        before = self.scorer.passes.total
        if fresh:
            lp, g, hit = self.scorer.log_prob_grad_greedy(x[None])
            chain["s"] = float(self.remember(x[None], lp, hit)[0])
            chain["grad"] = g[0]
        n = min(self.width, left - grad_cost)
        cand = swaps(self.rng, x, n, self.choices(x, chain.get("grad")))
        new = list(dict.fromkeys(tuple(r) for r in cand.tolist() if tuple(r) not in self.seen))
        if new:
            xs = np.asarray(new, dtype=np.int64)
            lp, hit = self.scorer.evaluate(xs)
            self.remember(xs, lp, hit)
        moved = False
        for r in dict.fromkeys(tuple(r) for r in cand.tolist()):
            if self.seen[r][0] > chain["s"]:
                chain["x"], chain["s"], chain["grad"] = np.asarray(r, dtype=np.int64), self.seen[r][0], None
                moved = True
        if not new and not moved:  # a local maximum whose neighbours are all known: restart from a draw of D
            chain.update(x=self.dist.sample(1, self.rng)[0], s=-math.inf, grad=None)
            self.restarts += 1
        return self.scorer.passes.total - before

    def elites(self, m: int) -> list[tuple[int, ...]]:
        """The ``m`` best distinct inputs evaluated, by score (first seen on ties)."""
        order = sorted(self.seen, key=lambda r: -self.seen[r][0])
        return order[:m]


def log_mixture(x: np.ndarray, dist: ProductDistribution, elites: np.ndarray, *, alpha: float, rho: float,
                shape: str) -> np.ndarray:
    """``(n,)`` float64 natural log of the proposal q(x) (module doc) for inputs ``x`` ``(n, k)`` in D's support;
    ``elites`` ``(m, k)`` (m may be 0: q = D)."""
    pos = [{int(v): j for j, v in enumerate(t.tolist())} for t in dist.ids]
    idx = np.stack([[pos[i][int(v)] for v in x[:, i]] for i in range(dist.k)], axis=1)  # (n, k)
    log_pi = np.stack([np.log(dist.probs[i])[idx[:, i]] for i in range(dist.k)], axis=1)  # (n, k)
    log_p = log_pi.sum(axis=1)
    if not len(elites):
        return log_p
    if shape == "kernel":
        same = x[:, None, :] == elites[None, :, :]  # (n, m, k)
        comp = np.log(rho * same + (1 - rho) * np.exp(log_pi)[:, None, :]).sum(axis=2)  # (n, m)
        top = comp.max(axis=1, keepdims=True)
        log_c = top[:, 0] + np.log(np.exp(comp - top).mean(axis=1))
    else:
        hist = [np.bincount([pos[i][int(v)] for v in elites[:, i]], minlength=len(dist.ids[i])) / len(elites)
                for i in range(dist.k)]
        log_c = np.sum([np.log(rho * hist[i][idx[:, i]] + (1 - rho) * dist.probs[i][idx[:, i]])
                        for i in range(dist.k)], axis=0)
    return np.logaddexp(math.log(alpha) + log_p, math.log1p(-alpha) + log_c)


def sample_mixture(n: int, dist: ProductDistribution, elites: np.ndarray, rng: np.random.Generator, *,
                   alpha: float, rho: float, shape: str) -> np.ndarray:
    """``(n, k)`` int64 draws from the proposal q (module doc)."""
    x = dist.sample(n, rng)
    if not len(elites):
        return x
    mix = rng.random(n) >= alpha  # rows drawn from the search component
    if shape == "kernel":
        centre = elites[rng.integers(len(elites), size=n)]
        keep = rng.random((n, dist.k)) < rho
        x = np.where(mix[:, None] & keep, centre, x)
    else:
        for i in range(dist.k):
            from_hist = mix & (rng.random(n) < rho)
            x[from_hist, i] = elites[rng.integers(len(elites), size=int(from_hist.sum())), i]
    return x.astype(np.int64)


@register("search_is")
def search_is(scorer: BehaviourScorer, dist: ProductDistribution, *, budget: int, seed: int, temperature: int = 1,
              search_share: float = 0.25, method: str = "gcg", restarts: int = 2, search_width: int = 16,
              topk: int = 8, elite: int = 8, alpha: float = 0.1, rho: float = 0.5,
              shape: str = "kernel") -> Estimate:
    """Search-then-sample importance sampling (module doc). ``search_share`` in [0, 1): the share of ``budget`` the
    search may spend (0: q = D); ``method``: ``"gcg"`` or ``"random"``; ``restarts`` chains; ``search_width``
    candidates per step among each position's ``topk`` best tokens; ``elite`` inputs (m) define the proposal;
    ``alpha`` in (0, 1): D's share of the mixture; ``rho`` in (0, 1]: each component's concentration on the elite's
    tokens; ``shape``: ``"kernel"`` or ``"histogram"``. Raises ``ValueError`` as ``estimate`` does, for bad options,
    and for a budget that does not pay for one step of every chain and one sample."""
    check_common(scorer, dist, budget, temperature)
    if not (0 <= search_share < 1 and 0 < alpha < 1 and 0 < rho <= 1) or method not in ("gcg", "random") or \
            shape not in ("kernel", "histogram") or min(restarts, search_width, topk, elite) < 1:
        raise ValueError(f"search_is needs 0 <= search_share < 1, 0 < alpha < 1, 0 < rho <= 1, method gcg or random, "
                         f"shape kernel or histogram and restarts, search_width, topk, elite >= 1 (got "
                         f"{search_share}, {alpha}, {rho}, {method!r}, {shape!r}, {restarts}, {search_width}, {topk}, "
                         f"{elite})")
    step_cost = (2 if method == "gcg" else 0) + 1
    search_budget = int(search_share * budget)
    if search_share > 0:
        need(budget, math.ceil(restarts * step_cost / search_share) + 1, "search_is",
             f"{restarts} search step(s) ({step_cost} passes each) within search_share {search_share} and one sample")
    rng = np.random.default_rng(seed)
    before = snapshot(scorer)
    search = _Search(scorer, dist, temperature, rng, method, search_width, topk)
    chains = [{"x": x, "s": -math.inf} for x in dist.sample(restarts, rng)] if search_budget else []
    steps = stalls = 0
    while chains and stalls < STALLS:
        cost = search.step(chains[steps % len(chains)], search_budget - spent(scorer, before).total)
        if cost is None:
            break
        steps, stalls = steps + 1, (stalls + 1 if cost == 0 else 0)
    elites = np.asarray(search.elites(elite), dtype=np.int64).reshape(-1, dist.k)
    searched = spent(scorer, before)
    n = budget - searched.total
    x = sample_mixture(n, dist, elites, rng, alpha=alpha, rho=rho, shape=shape)
    log_w = dist.log_prob(x) - log_mixture(x, dist, elites, alpha=alpha, rho=rho, shape=shape)
    log_terms = log_w + log_event(scorer, x, temperature)
    value, se = mean_and_se(log_terms)
    w = np.exp(log_w - log_w.max())
    best = max(search.seen.values(), default=None, key=lambda v: v[0])
    how = ("stderr: sample sd (ddof 1) of the terms w*f / sqrt(N); ci: value +- 1.96 stderr, clipped; "
           "none when no term is positive")
    return Estimate(value=value, stderr=se, ci=normal_ci(value, se) if value > 0 else None, uncertainty=how,
                    passes=spent(scorer, before), budget=budget, seed=seed, estimator="search_is",
                    temperature=temperature, samples=n,
                    settings={"search_share": search_share, "method": method, "restarts": restarts,
                              "search_width": search_width, "topk": topk, "elite": elite, "alpha": alpha, "rho": rho,
                              "shape": shape},
                    details={"search_passes": searched.total, "search_steps": steps,
                             "search_restarts": search.restarts,
                             "search_evaluated": len(search.seen),
                             "search_hits": sum(v[2] for v in search.seen.values()),
                             "best_log_p": best[1] if best else None, "elites": elites.tolist(),
                             "ess": float(w.sum() ** 2 / (w**2).sum()), "hits": int((log_terms > -np.inf).sum())})
