"""Composite predictors: a mixture or a product of experts of other predictors, weights fitted on practice truth.

    mixture:  q ∝ (sum_i w_i p_i)^beta          (w on the simplex; fitted by ``predictors.mixture.fit_mixture``)
    product:  q ∝ exp(sum_i w_i log p_i)        (w_i >= 0, not normalised: a log-linear pool; fitted here)

Both minimise the mean KL(p_target || q) over the practice split (``ctx.practice_truth``); the sealed truth is never
read. Product-of-experts gradient, per prompt: dKL/dw_i = E_q[log p_i] - E_p[log p_i].

A composite is a new system (DESIGN.md): ``predictors.approval.system_identity`` gives it its own identity (kind,
settings and its members' identities), and it needs its own approval record whatever its members' status --
``tests/predictors/test_composite.py`` checks that a composite of approved members is refused until approved itself.
The registered ``mixture`` of issue 4 is the same mixture; it stays level 0 only while all its members are.

Left out: context-dependent weights, fitting on anything but the practice split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.io import loads_json

from .base import PredictorContext, PromptView, create, register
from .format import Prediction

KINDS = ("mixture", "product")


def parse_member(spec: Any) -> tuple[str, dict[str, Any]]:
    """A member given as ``"name"``, ``"name:{json options}"``, ``{"name": ..., "options": {...}}`` or ``[name, opts]``."""
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return spec["name"], dict(spec.get("options") or {})
    if isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return spec[0], dict(spec[1])
    if isinstance(spec, str) and spec:
        name, sep, opts = spec.partition(":")
        if not sep or name == "file":  # "file:..." names a predictions file, not options
            return spec, {}
        try:
            options = loads_json(opts)  # a key given twice is refused, not "last wins"
        except ValueError as e:
            raise ValueError(f"member {spec!r}: options after ':' must be a JSON object ({e})") from e
        if not isinstance(options, dict):
            raise ValueError(f"member {spec!r}: options after ':' must be a JSON object")
        return name, options
    raise ValueError(f"member {spec!r}: give a predictor name, 'name:{{json options}}' or {{'name':..,'options':..}}")


@dataclass(frozen=True)
class ProductFit:
    weights: np.ndarray  # (k,), >= 0
    kl: float  # mean KL on the fitting prompts
    n: int
    converged: bool


def apply_product(members: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """(n, V) rows of ``q ∝ exp(sum_i w_i log p_i)``; members must be strictly positive."""
    logs = [np.log(np.asarray(m, dtype=np.float64)) for m in members]
    z = sum(float(w) * lg for w, lg in zip(weights, logs, strict=True))
    z = z - z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return q / q.sum(axis=1, keepdims=True)


def fit_product(members: Sequence[np.ndarray], truth_logp: np.ndarray, *, max_iter: int = 200) -> ProductFit:
    """Non-negative weights of a log-linear pool minimising mean KL(truth || q) (L-BFGS-B, analytic gradient)."""
    from scipy.optimize import minimize

    L = np.stack([np.log(np.asarray(m, dtype=np.float64)) for m in members])  # (k, n, V)
    logp = np.asarray(truth_logp, dtype=np.float64)
    if L.shape[1:] != logp.shape or not np.all(np.isfinite(L)):
        raise ValueError(f"members must be strictly positive (n, V) rows matching the truth {logp.shape}")
    p = np.exp(logp)
    n = logp.shape[0]
    neg_entropy = float((p * logp).sum() / n)
    e_p = np.einsum("knv,nv->k", L, p) / n  # E_p[log p_i], fixed

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.tensordot(w, L, axes=1)
        z -= z.max(axis=1, keepdims=True)
        logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        q = np.exp(logq)
        value = neg_entropy - float((p * logq).sum() / n)
        return value, np.einsum("knv,nv->k", L, q) / n - e_p

    k = L.shape[0]
    res = minimize(loss, np.full(k, 1.0 / k), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * k,
                   options={"maxiter": max_iter})
    return ProductFit(np.asarray(res.x), float(res.fun), n, bool(res.success))


class CompositePredictor:
    def __init__(self, kind: str, members: list[Any], specs: list[Any], weights: np.ndarray, temperature: float,
                 practice_kl: float, member_kl: list[float], ctx: PredictorContext) -> None:
        self.name, self.kind, self.members, self.specs = "composite", kind, members, specs
        self.weights, self.temperature, self.practice_kl, self.member_kl = weights, temperature, practice_kl, member_kl
        self.ctx = ctx

    def distributions(self, prompts: Sequence[PromptView]) -> np.ndarray:
        from .mixture import _dense, apply_mixture

        dense = [_dense(m, prompts, self.ctx) for m in self.members]
        if self.kind == "mixture":
            return apply_mixture(dense, self.weights, self.temperature)
        return apply_product(dense, self.weights)

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        return [Prediction(p.id, probs=row) for p, row in zip(prompts, self.distributions(prompts), strict=True)]

    def identity(self) -> dict[str, Any]:
        return {"kind": f"composite-{self.kind}", "members": self.specs,
                "weights": [round(float(w), 6) for w in self.weights], "temperature": round(self.temperature, 6),
                "practice_kl": round(self.practice_kl, 6), "member_practice_kl": [round(x, 6) for x in self.member_kl],
                "member_identities": [getattr(m, "identity", lambda: {})() for m in self.members]}


@register("composite")
def composite(ctx: PredictorContext, *, members: Sequence[Any] = (), kind: str = "mixture", temperature: bool = True,
              batch_size: int = 64) -> CompositePredictor:
    """A mixture or product of experts of ``members`` with weights fitted on the practice split's truth."""
    from .mixture import _dense, _kl_rows, fit_mixture

    if kind not in KINDS:
        raise ValueError(f"composite kind {kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(members, str):
        members = [members]
    if len(members) < 2:
        raise ValueError("a composite needs at least two members: -O members='[\"ngram\", \"gemma3-270m\"]'")
    if ctx.practice_truth is None or ctx.practice_prompts is None:
        raise ValueError("a composite fits its weights on the practice split's truth: build the suite with truth")
    parsed = [parse_member(m) for m in members]
    built = [create(name, ctx, **opts) for name, opts in parsed]
    prompts = ctx.practice_prompts()
    ids, logp = ctx.practice_truth()
    if [p.id for p in prompts] != list(ids):
        raise ValueError("practice prompts and practice truth are not in the same order: rebuild the suite")
    dense = [np.concatenate([_dense(m, prompts[i : i + batch_size], ctx) for i in range(0, len(prompts), batch_size)])
             for m in built]
    member_kl = [float(_kl_rows(logp, d).mean()) for d in dense]
    if kind == "mixture":
        fit = fit_mixture(dense, logp, temperature=temperature)
        weights, temp, kl = fit.weights, fit.temperature, fit.kl
    else:
        pfit = fit_product(dense, logp)
        weights, temp, kl = pfit.weights, 1.0, pfit.kl
    specs = [name if not opts else {"name": name, "options": opts} for name, opts in parsed]
    return CompositePredictor(kind, built, specs, weights, temp, kl, member_kl, ctx)
