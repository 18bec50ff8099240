"""Fitted mixtures: member predictors blended with weights and a temperature fitted on the practice split's truth.

    m(v) = sum_i w_i p_i(v),    q(v) = m(v)^beta / sum_u m(u)^beta,    beta = 1 / temperature,

with w on the simplex (softmax of free parameters) and beta > 0, chosen to minimise the mean KL(p_target || q) over the
practice prompts (L-BFGS-B with the analytic gradient below). Only ``ctx.practice_truth()`` is read: the sealed truth
never reaches the fit (``tests/predictors/test_mixture.py`` proves it by watching the suite's truth reads).

Reusable pieces (issue 5's composites use them on helper-model members):
- ``fit_mixture(members, truth_logp)``: pure function, list of (n, V) probability matrices (rows sum to 1) and the
  target's (n, V) log-probabilities -> ``MixtureFit(weights, temperature, kl, ...)``;
- ``apply_mixture(members, weights, temperature)``: the blended (n, V) rows.

Gradient (per prompt, p = target, g_v = beta (q_v - p_v) / m_v):
    dKL/dbeta = sum_v (q_v - p_v) log m_v,    dKL/dw_i = sum_v g_v p_i(v),
then chained through the softmax and beta = exp(b). Left out: context-dependent weights (one weight vector per suite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import PredictorContext, PromptView, create, register
from .cache import component_names, prompt_cache
from .format import Prediction, densify

DEFAULT_MEMBERS = ("ngram", "ngram-domain")
INDEXED = ("ngram", "ngram-domain", "suffix")  # members whose factories take ``rebuild``


@dataclass(frozen=True)
class MixtureFit:
    weights: np.ndarray  # (k,) on the simplex
    temperature: float  # 1 / beta
    kl: float  # mean KL (nats) of the fitted mixture on the fitting prompts
    member_kl: list[float]  # mean KL of each member alone on the same prompts
    n: int  # prompts fitted on
    converged: bool


def _stack(members: Sequence[np.ndarray], truth_logp: np.ndarray | None = None) -> np.ndarray:
    if not members:
        raise ValueError("a mixture needs at least one member")
    P = np.stack([np.asarray(m, dtype=np.float64) for m in members])  # (k, n, V)
    if truth_logp is not None and P.shape[1:] != truth_logp.shape:
        raise ValueError(f"member predictions have shape {P.shape[1:]}, truth has {truth_logp.shape}: give one row "
                         "per prompt over the full vocabulary, in the truth's prompt order")
    if not np.all(np.isfinite(P)) or np.any(P < 0):
        raise ValueError("member predictions must be finite and non-negative")
    return P


def _row_weights(weights: np.ndarray, available: np.ndarray | None, n: int) -> np.ndarray:
    """(n, k) per-prompt weights: ``weights`` restricted to each prompt's available members, renormalised."""
    W = np.broadcast_to(weights, (n, weights.size)).copy()
    if available is not None:
        W *= np.asarray(available, dtype=bool).T
    total = W.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"prompt {int(np.flatnonzero(total[:, 0] <= 0)[0])}: no member with positive weight is "
                         "available; make at least one always-available member (e.g. ngram) part of the mixture")
    return W / total


def apply_mixture(members: Sequence[np.ndarray], weights: np.ndarray, temperature: float = 1.0,
                  available: np.ndarray | None = None) -> np.ndarray:
    """(n, V) rows of the tempered mixture ``q ∝ (sum_i w_i p_i)^(1/temperature)``.

    ``available`` (k, n) bool marks which member predicts which prompt (default: all); an abstaining member's
    weight is shared out among the others on that prompt, and its rows are ignored (zeros are fine there)."""
    P = _stack(members)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (P.shape[0],) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights must be {P.shape[0]} non-negative numbers summing to 1, got {w}")
    m = np.einsum("nk,knv->nv", _row_weights(w, available, P.shape[1]), P)
    return _temper(m, 1.0 / temperature)


def _temper(m: np.ndarray, beta: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        logit = beta * np.log(m)
    logit -= logit.max(axis=1, keepdims=True)
    q = np.exp(logit)
    return q / q.sum(axis=1, keepdims=True)


def _kl_rows(truth_logp: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = np.exp(truth_logp)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (truth_logp - np.log(q)), 0.0).sum(axis=1)


def mixture_objective(theta: np.ndarray, P: np.ndarray, logp: np.ndarray, available: np.ndarray,
                      temperature: bool = True) -> tuple[float, np.ndarray]:
    """Mean KL(truth || mixture) and its gradient in the free parameters ``theta`` = (a_1..a_k[, b]).

    Weights are ``exp(a)`` renormalised over each prompt's available members, beta = exp(b) (or 1)."""
    k, n, _ = P.shape
    p = np.exp(logp)
    a, b = theta[:k], (theta[k] if temperature else 0.0)
    W = _row_weights(np.exp(a - a.max()), available, n)  # (n, k)
    beta = float(np.exp(b))
    m = np.einsum("nk,knv->nv", W, P)
    with np.errstate(divide="ignore"):
        logm = np.log(m)
    z = beta * logm
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    q /= q.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(np.where(p > 0, p * (logp - np.log(q)), 0.0).sum() / n)
        g = np.where(m > 0, beta * (q - p) / m, 0.0)
    # dKL/da_i = mean_n W_ni sum_v g_nv P_inv   (the - m_nv term vanishes: sum_v g_nv m_nv = beta sum_v (q - p) = 0)
    grad = [(W.T * np.einsum("knv,nv->kn", P, g)).sum(axis=1) / n]
    if temperature:
        grad.append([beta * float(((q - p) * np.where(m > 0, logm, 0.0)).sum() / n)])
    return value, np.concatenate(grad)


def fit_mixture(members: Sequence[np.ndarray], truth_logp: np.ndarray, *, available: np.ndarray | None = None,
                temperature: bool = True, max_iter: int = 200) -> MixtureFit:
    """Weights (and temperature, unless ``temperature=False``) minimising mean KL(truth || mixture).

    ``members``: k arrays (n, V) of probabilities, rows summing to 1; ``truth_logp``: (n, V) natural-log probabilities
    of the target on the same n prompts; ``available``: optional (k, n) bool mask of which member predicts which prompt
    (see ``apply_mixture``). Each prompt needs an available, strictly positive member, else its KL is infinite.
    """
    from scipy.optimize import minimize

    logp = np.asarray(truth_logp, dtype=np.float64)
    P = _stack(members, logp)
    k, n, _ = P.shape
    mask = np.ones((k, n), dtype=bool) if available is None else np.asarray(available, dtype=bool)
    if mask.shape != (k, n):
        raise ValueError(f"available must have shape (members, prompts) = {(k, n)}, got {mask.shape}")
    theta0 = np.zeros(k + (1 if temperature else 0))
    res = minimize(mixture_objective, theta0, args=(P, logp, mask, temperature), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter})
    a = res.x[:k]
    w = np.exp(a - a.max())
    w /= w.sum()
    beta = float(np.exp(res.x[k])) if temperature else 1.0
    with np.errstate(divide="ignore"):
        member_kl = [float(_kl_rows(logp[mask[i]], P[i][mask[i]]).mean()) if mask[i].any() else float("nan")
                     for i in range(k)]
    return MixtureFit(w, 1.0 / beta, float(res.fun), member_kl, n, bool(res.success))


def _dense(predictor: Any, prompts: Sequence[PromptView], ctx: PredictorContext) -> np.ndarray:
    """A member's predictions as validated full vectors (any registered predictor, whatever format it answers in)."""
    preds = predictor.predict(prompts)
    if len(preds) != len(prompts):
        raise ValueError(f"member {predictor.name!r} returned {len(preds)} predictions for {len(prompts)} prompts")
    return np.stack([densify(p, ctx.vocabulary, ctx.background) for p in preds])


class MixturePredictor:
    def __init__(self, name: str, members: list[Any], specs: list[Any], fit: MixtureFit, ctx: PredictorContext,
                 cache: bool) -> None:
        self.name, self.members, self.specs, self.fit, self.ctx, self.cache = name, members, specs, fit, ctx, cache

    def components(self, prompts: Sequence[PromptView]) -> tuple[list[np.ndarray], np.ndarray]:
        """Member rows (each (n, V)) followed by the prompt-cache rows, and the (k, n) availability mask."""
        rows = [_dense(m, prompts, self.ctx) for m in self.members]
        available = np.ones((len(rows), len(prompts)), dtype=bool)
        if self.cache:
            cache_rows, cache_available = prompt_cache([p.token_ids for p in prompts], self.ctx.vocab_size)
            rows.extend(cache_rows)
            available = np.concatenate([available, cache_available])
        return rows, available

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        rows, available = self.components(prompts)
        q = apply_mixture(rows, self.fit.weights, self.fit.temperature, available)
        return [Prediction(p.id, probs=q[i]) for i, p in enumerate(prompts)]

    def identity(self) -> dict[str, Any]:

        names = [*(s if isinstance(s, str) else s["name"] for s in self.specs),
                 *(component_names() if self.cache else [])]
        return {"kind": "fitted-mixture", "members": self.specs, "cache": self.cache,
                "weights": {n: round(float(w), 6) for n, w in zip(names, self.fit.weights, strict=True)},
                "temperature": round(self.fit.temperature, 6), "practice_kl": round(self.fit.kl, 6),
                "member_practice_kl": {n: round(x, 6) if np.isfinite(x) else None  # None: sparse alone, KL infinite
                                       for n, x in zip(names, self.fit.member_kl, strict=True)},
                "fitted_on": self.fit.n, "member_identities": [getattr(m, "identity", dict)() for m in self.members]}


@register("mixture")
def mixture(ctx: PredictorContext, *, members: Sequence[Any] = DEFAULT_MEMBERS, cache: bool = True,
            temperature: bool = True, batch_size: int = 64, rebuild: bool = False) -> MixturePredictor:
    """Members (default: ngram, ngram-domain) and prompt-cache components, mixed with weights and a temperature
    fitted on the practice split's truth."""
    from .composite import parse_member

    if isinstance(members, str):
        members = [members]
    if not members:
        raise ValueError("mixture option members is empty: name at least one predictor, e.g. -O members='[\"ngram\"]'")
    if ctx.practice_truth is None or ctx.practice_prompts is None:
        raise ValueError("mixture needs the practice split's truth to fit its weights: build the suite with truth "
                         "(`logitpred suite build NAME`)")
    parsed = [parse_member(m) for m in members]
    if any(name == "mixture" for name, _ in parsed):
        raise ValueError("a mixture cannot contain another 'mixture' member")
    specs = [name if not opts else {"name": name, "options": opts} for name, opts in parsed]
    built = [create(name, ctx, **({**opts, "rebuild": True} if rebuild and name in INDEXED else opts))
             for name, opts in parsed]
    prompts = ctx.practice_prompts()
    ids, logp = ctx.practice_truth()
    if [p.id for p in prompts] != list(ids):
        raise ValueError("practice prompts and practice truth are not in the same order: rebuild the suite")
    shell = MixturePredictor("mixture", built, specs, MixtureFit(np.ones(1), 1.0, 0.0, [], 0, False), ctx, cache)
    parts = [shell.components(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    rows = [np.concatenate([p[0][j] for p in parts]) for j in range(len(parts[0][0]))]
    available = np.concatenate([p[1] for p in parts], axis=1)
    fit = fit_mixture(rows, logp, available=available, temperature=temperature)
    return MixturePredictor("mixture", built, specs, fit, ctx, cache)
