"""Metropolis-Hastings Importance Sampling (MHIS; Wu & Hilton 2024, §4.3; learned from ARC's ``lpe/methods.py``,
written anew for behaviours and a pass budget).

``C`` independent chains (started from D) target the tilted distribution

    pi(x) ∝ p_D(x) exp(s(x) / T),   s(x) = log P(B | x) at temperature 1 (natural log),

with a proposal that picks one free position i uniformly and redraws it from
``r_i(v | x) ∝ p_i(v) exp(g_i(v; x) / T)``, g = the gradient of s with respect to the one-hot of position i at the
current x (``scorer.log_prob_and_grad``). Acceptance (Metropolis-Hastings with the reverse proposal, whose gradient is
taken at the proposed x'):

    log alpha = (s(x') - s(x)) / T + log p_i(x'_i) - log p_i(x_i) + log r_i(x_i | x') - log r_i(x'_i | x).

Estimator (the ratio / self-normalized form): since E_pi[f e^{-s/T}] = P_D(B) / Z and E_pi[e^{-s/T}] = 1 / Z with
``Z = E_D[e^{s/T}]``,

    P_hat = mean_pi(f e^{-s/T}) / mean_pi(e^{-s/T})       over the chains' states after burn-in.

It is *consistent* (converges to P_D(B) as the chains run long), not exactly unbiased at a finite budget: the chains
start from D, not from pi, and a ratio of means is biased by O(1/N). At temperature 1 with T = 1, f e^{-s} = 1 and
P_hat is the harmonic mean 1 / mean_pi(1 / P(B | x)).

Budget: the chains' starting states cost C forward + C backward passes (at temperature 0 the greedy indicator is
read from the same forward, ``scorer.log_prob_grad_greedy``); each step then evaluates only the chains whose proposed token differs from the current one (a
proposal equal to the current state is accepted without running the target), at the same cost per chain. Steps run
while the budget covers a full step of C chains. States count after ``burn_in`` (a fraction of the budget) is spent.
Minimum budget: two full steps' worth, 2 C (forward + backward) passes.

Uncertainty: the chains are independent, so with per-chain means ``A_c`` (of f e^{-s/T}) and ``B_c`` (of e^{-s/T}),
the delta-method standard error of a ratio estimator, sd_c(A_c - P_hat B_c) / (mean_c B_c sqrt(C)) (Cochran, Sampling
Techniques, §6.3); 95% interval ``value +- 1.96 se`` clipped to [0, 1], ``None`` when the value is 0.
"""

from __future__ import annotations

import math

import numpy as np

from ..distributions import ProductDistribution
from ..scorer import BehaviourScorer
from .base import Estimate, check_common, need, normal_ci, register, snapshot, spent


def _proposal(logp: np.ndarray, grad_row: np.ndarray, tilt: float) -> np.ndarray:
    """Log-probabilities over position i's support: log p_i + g_i / T, normalized."""
    z = logp + grad_row / tilt
    z = z - z.max()
    return z - math.log(float(np.exp(z).sum()))


@register("mhis")
def mhis(scorer: BehaviourScorer, dist: ProductDistribution, *, budget: int, seed: int, temperature: int = 1,
         chains: int = 8, tilt_temperature: float = 1.0, burn_in: float = 0.2) -> Estimate:
    """MHIS (module doc) with ``chains`` chains, tilt ``tilt_temperature`` (T > 0) and ``burn_in`` in [0, 1) (share of
    the budget spent before states count). Raises ``ValueError`` as ``estimate`` does, for bad options, and for a
    budget under two full steps (``4 * chains`` passes)."""
    check_common(scorer, dist, budget, temperature)
    if chains < 1 or not tilt_temperature > 0 or not 0 <= burn_in < 1:
        raise ValueError(f"mhis needs chains >= 1, tilt_temperature > 0 and 0 <= burn_in < 1 (got {chains}, "
                         f"{tilt_temperature}, {burn_in})")
    per = 2  # forward + backward per chain step; the greedy indicator is read from the same forward
    need(budget, 2 * chains * per, "mhis", f"starting {chains} chains and one step")
    rng = np.random.default_rng(seed)
    before = snapshot(scorer)
    T = tilt_temperature
    logp = [np.log(p) for p in dist.probs]
    pos_of = [{int(v): j for j, v in enumerate(t.tolist())} for t in dist.ids]

    def evaluate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, g, hit = scorer.log_prob_grad_greedy(x)
        log_f = s if temperature == 1 else np.where(hit, 0.0, -np.inf)
        return s, g, log_f

    x = dist.sample(chains, rng)
    s, g, log_f = evaluate(x)
    rows = np.arange(chains)
    kept_s, kept_f = [], []  # (steps, C) after burn-in
    accepted = proposed = 0
    while budget - spent(scorer, before).total >= chains * per:
        counting = spent(scorer, before).total >= burn_in * budget
        i = rng.integers(dist.k, size=chains)
        cur = np.array([pos_of[i[c]][int(x[c, i[c]])] for c in rows])
        new, log_fwd = np.empty(chains, dtype=np.int64), np.empty(chains)
        for c in rows:
            lq = _proposal(logp[i[c]], g[c, i[c], dist.ids[i[c]]], T)
            new[c] = rng.choice(len(lq), p=np.exp(lq) / np.exp(lq).sum())
            log_fwd[c] = lq[new[c]]
        moved = np.flatnonzero(new != cur)
        if len(moved):
            xp = x[moved].copy()
            xp[np.arange(len(moved)), i[moved]] = [dist.ids[i[c]][new[c]] for c in moved]
            sp, gp, fp = evaluate(xp)
            for m, c in enumerate(moved):
                lr = _proposal(logp[i[c]], gp[m, i[c], dist.ids[i[c]]], T)
                log_alpha = ((sp[m] - s[c]) / T + logp[i[c]][new[c]] - logp[i[c]][cur[c]] + lr[cur[c]]
                             - log_fwd[c])
                proposed += 1
                if math.log(rng.random()) < log_alpha:
                    accepted += 1
                    x[c], s[c], g[c], log_f[c] = xp[m], sp[m], gp[m], fp[m]
        if counting:
            kept_s.append(s.copy())
            kept_f.append(log_f.copy())
    if not kept_s:  # burn-in took every step: count the final states
        kept_s, kept_f = [s.copy()], [log_f.copy()]
    S, F = np.array(kept_s), np.array(kept_f)  # (steps, C)
    # per chain: A_c = mean_t f e^{-s/T}, B_c = mean_t e^{-s/T}, both scaled by a common e^{-shift}
    shift = float((-S / T).max())
    Bc = np.exp(-S / T - shift).mean(axis=0)
    Ac = np.exp(F - S / T - shift).mean(axis=0)
    value = float(Ac.mean() / Bc.mean())
    if chains >= 2:
        se = float(np.std(Ac - value * Bc, ddof=1) / (Bc.mean() * math.sqrt(chains)))
    else:
        se = math.nan
    how = ("stderr: delta method for a ratio estimator over the independent chains, sd_c(A_c - P B_c) / (mean B "
           "sqrt(C)); ci: value +- 1.96 stderr, clipped; none when the value is 0")
    return Estimate(value=value, stderr=se, ci=normal_ci(value, se) if value > 0 else None,
                    uncertainty=how, passes=spent(scorer, before), budget=budget, seed=seed, estimator="mhis",
                    temperature=temperature, samples=int(S.size),
                    settings={"chains": chains, "tilt_temperature": T, "burn_in": burn_in},
                    details={"steps_kept": len(S), "acceptance": accepted / proposed if proposed else None,
                             "moves_proposed": proposed})
