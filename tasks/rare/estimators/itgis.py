"""Independent Token Gradient Importance Sampling (ITGIS; Wu & Hilton 2024, §4.2, "ITGIS"; learned from ARC's
``lpe/methods.py``, written anew for behaviours and a pass budget).

The proposal keeps the positions independent and tilts each one by a score table ``S`` ``(k, V)``:

    q_i(v) ∝ p_i(v) exp(S_i(v) / T_t)      (v in the support of position i; p_i is D's position-i distribution)

``S`` is an exponential moving average (decay ``d``) of the batch-mean gradient of ``log P(B | x)`` with respect to
the one-hot of each free position (``scorer.log_prob_and_grad``: to first order, the change of the log-probability
when position i is set to v). After t batches ``S = sum_{j<t} d^(t-1-j) g_j``; ``T_t = T (1 - d^t) / (1 - d)`` makes
``S / T_t`` the weighted *average* of past gradients over ``T`` (the first batch, S = 0, samples from D itself).
With ``f(x) = P(B | x) = exp(log P)`` and a gradient that were exact and constant, ``T = 1`` would give the
zero-variance proposal ``p(x) P(B | x)``; the score is log P(B | x) at temperature 1 for both events.

Estimator: ``P_hat = (1/N) sum_n w(x_n) f(x_n)`` with ``w(x) = prod_i p_i(x_i) / q_i(x_i)`` (natural-log weights,
exact per position) over the N samples of the batches after the first ``warmup`` ones. Unbiased: the proposal of
batch t depends only on batches before t, so each term has conditional mean P_D(B) given the past (the terms form a
martingale-difference sequence around P_D(B)), and which batches count is fixed in advance.

``warmup`` (default 1) departs from ARC's code, which averages every batch: the first batch is drawn from D itself
(S = 0), so for a rare event its terms are naive Monte Carlo terms, whose variance (about P / n per term at
temperature 0) swamps the tilted batches'. Its gradients still adapt the proposal; ``warmup=0`` counts it as ARC does.

Budget: a gradient batch of b inputs costs b forward + b backward passes (at temperature 0 the greedy indicator is
read from the gradient's own forward pass, ``scorer.log_prob_grad_greedy``). Gradient batches run while the budget still leaves room for one more input after them; the rest of the
budget is one last batch from the final proposal, forward only (its gradients would never be used). Minimum budget:
the warmup batches and one more input.

Uncertainty: standard error = sample sd (ddof 1) of the N terms w f over sqrt(N) (the martingale-CLT estimate); 95%
interval ``value +- 1.96 se`` clipped to [0, 1]; ``ci = None`` when every term is zero (no sample saw the event: the
importance sample gives no bound). ``details``: the effective sample size of the weights, (sum w)^2 / sum w^2.
"""

from __future__ import annotations

import math

import numpy as np

from ..distributions import ProductDistribution
from ..scorer import BehaviourScorer
from .base import Estimate, check_common, mean_and_se, need, normal_ci, register, snapshot, spent


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - math.log(float(np.exp(z).sum()))


@register("itgis")
def itgis(scorer: BehaviourScorer, dist: ProductDistribution, *, budget: int, seed: int, temperature: int = 1,
          batch: int = 32, tilt_temperature: float = 1.0, decay: float = 0.9, warmup: int = 1) -> Estimate:
    """ITGIS (module doc) with ``batch`` inputs per gradient batch, proposal temperature ``tilt_temperature`` (T, in
    nats of log P(B | x) per unit of tilt), EMA ``decay`` (d in [0, 1)) and ``warmup`` batches that only adapt.
    Raises ``ValueError`` as ``estimate`` does, for ``batch < 1``, ``tilt_temperature <= 0``, ``decay`` outside
    [0, 1) or ``warmup < 0``, and for a budget that does not cover the warmup batches and one more input
    (``2 * warmup * batch + 1`` passes)."""
    check_common(scorer, dist, budget, temperature)
    if batch < 1 or not tilt_temperature > 0 or not 0 <= decay < 1 or warmup < 0:
        raise ValueError(f"itgis needs batch >= 1, tilt_temperature > 0, 0 <= decay < 1 and warmup >= 0 (got "
                         f"{batch}, {tilt_temperature}, {decay}, {warmup})")
    per_grad = 2  # passes per input of a gradient batch: forward + backward (the greedy indicator comes with them)
    need(budget, warmup * batch * per_grad + 1, "itgis", f"{warmup} warmup batch(es) of {batch} and one more input")
    rng = np.random.default_rng(seed)
    before = snapshot(scorer)
    logp = [np.log(p) for p in dist.probs]  # per position, over its support
    scores = [np.zeros(len(t)) for t in dist.ids]  # S restricted to each support
    terms, log_w_all, t = [], [], 0
    while True:
        left = budget - spent(scorer, before).total
        grad_batch = per_grad * batch + 1 <= left
        n = batch if grad_batch else left
        if n <= 0:
            break
        temp_t = tilt_temperature * (1 - decay**t) / (1 - decay) if t > 0 else 1.0
        idx, log_w = [], np.zeros(n)
        for i in range(dist.k):
            log_q = _log_softmax(logp[i] + scores[i] / temp_t)
            j = rng.choice(len(log_q), size=n, p=np.exp(log_q) / np.exp(log_q).sum())
            idx.append(j)
            log_w += logp[i][j] - log_q[j]
        x = np.stack([dist.ids[i][idx[i]] for i in range(dist.k)], axis=1).astype(np.int64)
        if grad_batch:
            log_f, grad, hit = scorer.log_prob_grad_greedy(x)
            for i in range(dist.k):
                scores[i] = decay * scores[i] + grad[:, i, dist.ids[i]].mean(axis=0)
        else:
            log_f, hit = scorer.evaluate(x)
        if temperature == 0:
            log_f = np.where(hit, 0.0, -np.inf)
        if t >= warmup:
            terms.append(log_w + log_f)
            log_w_all.append(log_w)
        t += 1
        if not grad_batch:
            break
    log_terms, log_w = np.concatenate(terms), np.concatenate(log_w_all)
    value, se = mean_and_se(log_terms)
    w = np.exp(log_w - log_w.max())
    ess = float(w.sum() ** 2 / (w**2).sum())
    how = ("stderr: sample sd (ddof 1) of the terms w*f / sqrt(N); ci: value +- 1.96 stderr, clipped; "
           "none when no term is positive")
    return Estimate(value=value, stderr=se, ci=normal_ci(value, se) if value > 0 else None, uncertainty=how,
                    passes=spent(scorer, before), budget=budget, seed=seed, estimator="itgis",
                    temperature=temperature, samples=len(log_terms),
                    settings={"batch": batch, "tilt_temperature": tilt_temperature, "decay": decay,
                              "warmup": warmup},
                    details={"batches": t, "ess": ess, "hits": int((log_terms > -np.inf).sum())})
