"""Metrics: pure, vectorized functions over a batch of prompts.

Every function takes ``truth_logp`` (shape ``(n, V)``, natural-log probabilities of the target, rows logsumexp 0) and
``pred_p`` (shape ``(n, V)``, validated predictions: strictly positive rows summing to 1) and returns one value per
prompt. Names follow scikit-learn: ``*_divergence``/``*_loss``/``*_distance`` lower is better, ``*_score`` higher is
better. p is the target's distribution, q the prediction; sums run over the full vocabulary. Computed in float64.

Zero probabilities in the truth are legitimate (masked or padded vocabulary rows give log-probability ``-inf``): every
sum follows 0 log 0 = 0 (Cover & Thomas, *Elements of Information Theory*, 2.1), so KL and entropy stay finite,
and reverse KL is ``+inf`` where the prediction puts mass on a token the target never produces. NaN or ``+inf`` in the
truth is an error naming the row.

Ties earn no credit: top-1 and top-k overlap are *expected* values under uniformly random tie-breaking (in both
distributions, independently), so a flat prediction scores 1/V at top-1 and k/V at top-k, whatever the token ids.

References (checked in ``tests/evals/test_metrics.py``): ``scipy.stats.entropy`` for KL, ``scipy.spatial.distance.
jensenshannon`` (squared, base 2) for JS, direct formulas (and enumeration of tie-breaks) for the rest.

Two paths compute them at scale. ``per_prompt_metrics`` (below) is the dense path: every column of a batch in one pass
per cache-sized chunk of rows, on a thread pool, equal to the per-metric functions to ~1e-12. ``evals.sparse`` scores
predictions as given (named tokens + rest) in O(named tokens) from per-prompt truth constants (``tasks.truth_stats``),
and whole vectors with the dense path's kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.truth_stats import (
    chunk_rows,
    inclusion,
    kth_structure,
    run_chunks,
    scratch,
    support,
    top_candidates,
)

LN2 = float(np.log(2.0))


class _Batch:
    """Arrays shared by several metrics, computed once per batch (exp and log over (n, V) dominate the cost)."""

    def __init__(self, truth_logp: np.ndarray, pred_p: np.ndarray) -> None:
        t, q = np.asarray(truth_logp), np.asarray(pred_p)
        if t.ndim != 2 or q.ndim != 2:
            raise ValueError(f"expected 2-d arrays (prompts, vocabulary); got truth {t.shape} and prediction {q.shape}")
        if t.shape != q.shape:
            raise ValueError(
                f"truth has shape {t.shape} but prediction {q.shape}: one row per prompt, one column per token of the "
                "target's vocabulary in both"
            )
        self.t = t.astype(np.float64, copy=False)
        self.q = q.astype(np.float64, copy=False)
        bad = np.isnan(self.t) | (self.t == np.inf)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"truth row {row} holds {self.t[row, col]} at token {col}: log-probabilities must be finite "
                             "or -inf (a token the target never produces)")
        self.p = np.exp(self.t)
        self.log_q = np.log(self.q)
        # p log p and p (log p - log q) with 0 log 0 = 0: where p == 0 the log-ratio is set to 0 (it may be -inf)
        self.zero = self.p == 0
        self.t0 = np.where(self.zero, 0.0, self.t) if self.zero.any() else self.t

    def kl(self) -> np.ndarray:
        return (self.p * (self.t0 - self.log_q)).sum(axis=1)  # log q is finite (q > 0)

    def entropy(self) -> np.ndarray:
        return -(self.p * self.t0).sum(axis=1)

    def reverse_kl(self) -> np.ndarray:
        return (self.q * (self.log_q - self.t)).sum(axis=1)

    def js(self) -> np.ndarray:
        log_m = np.log(0.5 * (self.p + self.q))
        # p may be 0 (-inf truth, or underflow where the target is extremely sure): t0 keeps 0 log 0 = 0
        kl_pm = (self.p * (self.t0 - log_m)).sum(axis=1)
        kl_qm = (self.q * (self.log_q - log_m)).sum(axis=1)
        return np.clip(0.5 * (kl_pm + kl_qm) / LN2, 0.0, 1.0)

    def tv_and_brier(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.q - self.p
        return 0.5 * np.abs(d).sum(axis=1), (d * d).sum(axis=1)

    def top1(self) -> np.ndarray:
        return self.topk(1)

    def topk(self, k: int) -> np.ndarray:
        if not 1 <= k <= self.t.shape[1]:
            raise ValueError(f"k must be between 1 and the vocabulary size {self.t.shape[1]}, got {k}")
        # E|topk(p) ∩ topk(q)| / k = sum_v P(v in topk(p)) P(v in topk(q)) / k, tie-breaks independent
        return (topk_inclusion(self.t, k) * topk_inclusion(self.q, k)).sum(axis=1) / k


def topk_inclusion(x: np.ndarray, k: int) -> np.ndarray:
    """P(token v is among the k largest of its row) under uniformly random tie-breaking; shape ``(n, V)``.

    Tokens above the row's k-th largest value are in for sure; the ``e`` tokens equal to it share the ``k - g``
    remaining places (``g`` = tokens strictly above), each with probability ``(k - g) / e``.
    """
    kth = -np.partition(-x, k - 1, axis=1)[:, k - 1 : k]  # (n, 1): the k-th largest value of each row
    above, equal = x > kth, x == kth
    share = (k - above.sum(axis=1, keepdims=True)) / equal.sum(axis=1, keepdims=True)
    return np.where(above, 1.0, np.where(equal, share, 0.0))


def kl_divergence(truth_logp: np.ndarray, pred_p: np.ndarray, *, base: float = np.e) -> np.ndarray:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)); nats by default, bits with ``base=2``.

    The headline metric: the expected extra code length of coding the target's samples with the prediction.
    """
    return _Batch(truth_logp, pred_p).kl() / np.log(base)


def reverse_kl_divergence(truth_logp: np.ndarray, pred_p: np.ndarray) -> np.ndarray:
    """KL(q || p) = sum_v q(v) (log q(v) - log p(v)), nats. Large when the prediction is sure where the target is not."""
    return _Batch(truth_logp, pred_p).reverse_kl()


def js_divergence(truth_logp: np.ndarray, pred_p: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence, base 2, in [0, 1]: 0.5 KL(p||m) + 0.5 KL(q||m) with m = (p + q) / 2."""
    return _Batch(truth_logp, pred_p).js()


def total_variation_distance(truth_logp: np.ndarray, pred_p: np.ndarray) -> np.ndarray:
    """0.5 * sum_v |p(v) - q(v)|, in [0, 1]."""
    return _Batch(truth_logp, pred_p).tv_and_brier()[0]


def brier_score_loss(truth_logp: np.ndarray, pred_p: np.ndarray) -> np.ndarray:
    """sum_v (q(v) - p(v))^2, in [0, 2]."""
    return _Batch(truth_logp, pred_p).tv_and_brier()[1]


def top1_agreement_score(truth_logp: np.ndarray, pred_p: np.ndarray) -> np.ndarray:
    """P(argmax q == argmax p) with ties broken uniformly at random: 1.0 or 0.0 without ties, 1/V for a flat q."""
    return _Batch(truth_logp, pred_p).top1()


def topk_overlap_score(truth_logp: np.ndarray, pred_p: np.ndarray, *, k: int = 10) -> np.ndarray:
    """E|topk(p) ∩ topk(q)| / k in [0, 1], ties broken uniformly at random (``topk_inclusion``); k/V for a flat q."""
    return _Batch(truth_logp, pred_p).topk(k)


def cross_entropy_loss(pred_p: np.ndarray, next_token_ids: np.ndarray) -> np.ndarray:
    """-log q(x_next) in nats: the surprise of the prediction at the token that really came next."""
    q = np.asarray(pred_p, dtype=np.float64)
    ids = np.asarray(next_token_ids, dtype=np.int64)
    if q.ndim != 2 or ids.shape != (q.shape[0],):
        raise ValueError(f"expected (n, V) probabilities and n token ids; got {q.shape} and {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= q.shape[1]):
        raise ValueError(f"token ids must be in [0, {q.shape[1]}); got range [{ids.min()}, {ids.max()}]")
    return -np.log(q[np.arange(q.shape[0]), ids])


def entropy(truth_logp: np.ndarray) -> np.ndarray:
    """H(p) = -sum_v p(v) log p(v), nats, with 0 log 0 = 0: how uncertain the target itself is. Shape ``(n,)``."""
    t = np.asarray(truth_logp, dtype=np.float64)
    return _Batch(t, np.ones_like(t) / t.shape[-1]).entropy()


# --- the fast dense path ------------------------------------------------------------------------------------------
# ``per_prompt_metrics`` computes every metric of a batch in one pass per cache-sized chunk of rows, with few
# full-size temporaries: exp and log are numpy's SIMD float64 kernels (as fast on this hardware as torch's float32
# ones, and exact: float32 log q alone moves KL by up to ~1e-6 nats), the sums are row dot products (``einsum``), and
# the k-th largest value comes from block maxima and the few candidates above them instead of a partition of every
# row. Chunks run on a thread pool (numpy releases the GIL), one set of buffers per thread. Results equal the
# float64 functions above to ~1e-12.



def metric_columns(k: int = 10, *, tv_js: bool = True) -> list[str]:
    """The per-prompt columns, in output order (``js_bits`` and ``tv`` only with ``tv_js``)."""
    cols = ["kl_nats", "kl_bits", "reverse_kl_nats", "js_bits", "tv", "brier", "top1", f"top{k}_overlap",
            "ce_realized_nats", "target_ce_realized_nats", "target_entropy_nats"]
    return cols if tv_js else [c for c in cols if c not in ("js_bits", "tv")]


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_v a[i, v] b[i, v] for every row i (float64, no temporary)."""
    return np.einsum("ij,ij->i", a, b)


def check_truth(t: np.ndarray, offset: int = 0) -> bool:
    """Raise ``ValueError`` naming the row and token if ``t`` holds NaN or +inf; return whether it holds -inf."""
    if not t.size:
        return False
    top, low = t.max(), t.min()
    if not top < np.inf:  # NaN or +inf
        bad = np.isnan(t) | (t == np.inf)
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"truth row {offset + row} holds {t[row, col]} at token {col}: log-probabilities must be "
                         "finite or -inf (a token the target never produces)")
    return bool(low == -np.inf)


def overlap(sup: tuple[np.ndarray, np.ndarray, np.ndarray], q_at: np.ndarray, qstruct: tuple, k: int) -> np.ndarray:
    """E|top_k(p) ∩ top_k(q)| / k: p's support (CSR), ``q_at`` the prediction at those tokens, q's k-th structure."""
    indptr, _, incl_p = sup
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    theta, g, e = qstruct
    incl_q = inclusion(q_at, theta[rows], g[rows], e[rows], k)
    return np.bincount(rows, weights=incl_p * incl_q, minlength=n) / k


def _dense_chunk(t: np.ndarray, q: np.ndarray, nxt: np.ndarray, k: int, stats: Any, tv_js: bool, offset: int
                 ) -> dict[str, np.ndarray]:
    """All metrics of one chunk: ``t`` (r, V) truth log-probs, ``q`` (r, V) float64 predictions."""
    r, V = t.shape
    P, T, A, B = (s[:r] for s in scratch(chunk_rows(V), V, 4))
    np.copyto(T, t)
    np.exp(T, out=P)
    np.log(q, out=A)  # log q (q > 0)
    # q t is -inf on a token the target masks (t = -inf): reverse KL is then +inf, as it should be
    p_log_q, q_log_q, q_t = rowdot(P, A), rowdot(q, A), rowdot(q, T)
    rkl = q_log_q - q_t
    if stats is not None:
        p_log_p = stats.p_log_p
    else:
        p_log_p = rowdot(P, T)  # NaN on rows with -inf (0 * -inf): recomputed with 0 log 0 = 0
        redo = np.flatnonzero(np.isnan(p_log_p))
        if redo.size:
            t0 = np.where(np.isneginf(T[redo]), 0.0, T[redo])
            p_log_p[redo] = np.einsum("ij,ij->i", P[redo], t0)
    kl = p_log_p - p_log_q
    if not np.isfinite(kl).all():  # only NaN or +inf in the truth does this (q > 0): name the row
        check_truth(t, offset)
    np.subtract(q, P, out=B)
    out = {"kl_nats": kl, "reverse_kl_nats": rkl, "brier": rowdot(B, B)}
    if tv_js:
        np.abs(B, out=B)
        out["tv"] = 0.5 * B.sum(axis=1)
        np.add(P, q, out=B)
        B *= 0.5  # m = (p + q) / 2 > 0
        np.log(B, out=A)
        out["js_bits"] = np.clip((p_log_p + q_log_q - 2 * rowdot(B, A)) / (2 * LN2), 0.0, 1.0)
    ks = sorted({1, k})
    qcand = top_candidates(q, k)
    if stats is not None:
        sups = {kk: stats.topk[kk] for kk in ks}
    else:
        tcand = top_candidates(t, k)
        sups = {kk: support(tcand, r, kk) for kk in ks}
    for kk in ks:
        indptr, ids, _ = sups[kk]
        at = q[np.repeat(np.arange(r), np.diff(indptr)), ids]
        out["top1" if kk == 1 else "topk"] = overlap(sups[kk], at, kth_structure(qcand, r, kk), kk)
    if k == 1:
        out["topk"] = out["top1"]
    rows = np.arange(r)
    out["ce_realized_nats"] = -np.log(q[rows, nxt])
    out["target_ce_realized_nats"] = -t[rows, nxt].astype(np.float64)
    out["target_entropy_nats"] = -np.asarray(p_log_p, dtype=np.float64)
    return out


def check_inputs(t: np.ndarray, q_shape: tuple[int, ...], ids: np.ndarray, k: int) -> None:
    """Shape, k and token-id checks shared by the dense and sparse paths."""
    if t.ndim != 2 or len(q_shape) != 2:
        raise ValueError(f"expected 2-d arrays (prompts, vocabulary); got truth {t.shape} and prediction {q_shape}")
    if t.shape != tuple(q_shape):
        raise ValueError(
            f"truth has shape {t.shape} but prediction {tuple(q_shape)}: one row per prompt, one column per token of "
            "the target's vocabulary in both"
        )
    n, V = t.shape
    if not 1 <= k <= V:
        raise ValueError(f"k must be between 1 and the vocabulary size {V}, got {k}")
    if ids.shape != (n,):
        raise ValueError(f"expected (n, V) probabilities and n token ids; got {tuple(q_shape)} and {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"token ids must be in [0, {V}); got range [{ids.min()}, {ids.max()}]")


def per_prompt_metrics(truth_logp: np.ndarray, pred_p: np.ndarray, next_token_ids: np.ndarray, *, k: int = 10,
                       stats: Any = None, tv_js: bool = True) -> dict[str, np.ndarray]:
    """All metrics for a batch, as columns (``metric_columns(k)``). Target-side columns (``target_*``) do not depend
    on the prediction.

    The dense path (see above): chunks of rows on a thread pool; memory is four chunk-sized float64 buffers per
    thread. ``stats`` (``tasks.truth_stats.TruthStats`` of these rows, optional) supplies the target's entropy, sum of
    squares and top-k tokens. ``tv_js=False`` leaves out total variation and Jensen-Shannon.
    """
    t, q = np.asarray(truth_logp), np.asarray(pred_p)
    ids = np.asarray(next_token_ids, dtype=np.int64)
    check_inputs(t, q.shape, ids, k)
    if t.dtype not in (np.float32, np.float64):
        t = t.astype(np.float64)
    q = q.astype(np.float64, copy=False)

    def chunk(a: int, b: int) -> dict[str, np.ndarray]:
        sub = stats.take(slice(a, b)) if stats is not None else None
        return _dense_chunk(t[a:b], q[a:b], ids[a:b], k, sub, tv_js, a)

    parts = run_chunks(chunk, len(t), chunk_rows(t.shape[1]))
    return assemble(parts, k, tv_js=tv_js)


def assemble(parts: list[dict[str, np.ndarray]], k: int, *, tv_js: bool = True) -> dict[str, np.ndarray]:
    """The output columns in order from computed parts (``topk`` becomes ``top{k}_overlap``; ``kl_bits`` derived)."""
    cols = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0) for c in
            ("kl_nats", "reverse_kl_nats", "brier", "top1", "topk", "ce_realized_nats", "target_ce_realized_nats",
             "target_entropy_nats", *(("js_bits", "tv") if tv_js else ()))}
    full = {**cols, "kl_bits": cols["kl_nats"] / LN2, f"top{k}_overlap": cols["topk"]}
    return {c: full[c] for c in metric_columns(k, tv_js=tv_js)}
