"""Scoring predictions as they were given: named tokens plus a rest rule in O(named tokens), whole vectors densely.

A sparse prediction (``predictors.rows.PredictionRows``) names tokens S with probabilities a and spreads the rest r
over every other token with weights w (uniform: 1; unigram: the background b), q(v) = c w(v) off S with
c = r / Z, Z = sum_{v not in S} w(v) (V - |S|, or b's total minus b over S). With the per-prompt constants of the
truth (``tasks.truth_stats``: sum p, sum p log p, sum p^2, sum p log b, sum b p, sum of log p, ...):

- KL(p||q)   = sum p log p - sum_S p log a - (sum p - sum_S p) log c - (sum p log w - sum_S p log w)
- KL(q||p)   = sum_S a (log a - log p) + r log c + c (sum w log w - sum_S w log w) - c (sum w log p - sum_S w log p)
               (+inf when an unnamed token has log p = -inf)
- Brier      = sum_S a^2 + c^2 (sum w^2 - sum_S w^2) - 2 (sum_S a p + c (sum w p - sum_S w p)) + sum p^2
- -log q(x)  = -log a(x) if x is named, else -log(c w(x))
- top-k      = sum over the target's top-k tokens (cached, with tie shares) of their inclusion in q's top k, from q's
               k-th largest value: among the named values and the unnamed ones (one value c for a uniform rest; the
               largest background weights off S for a unigram rest), counts above and equal in closed form.

Every term is float64; the result equals the dense float64 path (``evals.metrics``) to ~1e-13 (tested to 1e-9).
A uniform rest gives every unnamed token exactly the dense path's value ``r / (V - |S|)``, so ties are the same ties.
A unigram rest divides by Z computed as (b's total - b over S), which can differ from the dense path's sum over the
unnamed tokens in the last bit: wherever that could decide a tie at the k-th value (a named value or another
background weight within 1e-12 of it), the row's top-k is computed on its exact dense vector instead.

Total variation and Jensen-Shannon do not decompose (|p - q| and log(p + q) at every token): ``tv_js=True`` computes
them on the dense path, in bulk, without building q: one pass over the truth per prediction with the unnamed value
c w(v) at every token, then the named tokens' terms replaced by their own (``_tv_js_chunk``): float64 and exact by
default, or float32 (``tv_js_float32``: about twice as fast, within ~1e-7).
Whole vectors go through ``evals.metrics`` dense kernels, with the cached truth constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from predictors.format import expand
from predictors.rows import PredictionRows
from tasks.truth_stats import rowsum, scratch

from .metrics import (
    LN2,
    _dense_chunk,
    assemble,
    chunk_rows,
    inclusion,
    kth_structure,
    run_chunks,
    top_candidates,
)

TIE_TOLERANCE = 1e-12  # relative: a unigram top-k boundary this close to another value is settled densely


@dataclass
class Background:
    """The unigram rest's weights and what sparse scoring needs of them, computed once per background."""

    b: np.ndarray  # (V,) float64
    log_b: np.ndarray
    total: float  # b.sum(), as numpy sums it (the dense path's Z when nothing is named)
    log_total: float  # sum b log b
    sq_total: float  # sum b^2
    order: np.ndarray  # token ids by weight, largest first (ties by id)
    distinct: np.ndarray  # distinct weights, ascending
    counts: np.ndarray  # tokens with each distinct weight

    @classmethod
    def of(cls, b: np.ndarray) -> Background:
        b = np.ascontiguousarray(b, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_b = np.log(b)
            log_total = float(np.where(b > 0, b * log_b, 0.0).sum())
        distinct, counts = np.unique(b, return_counts=True)
        return cls(b, log_b, float(b.sum()), log_total, float((b * b).sum()), np.argsort(-b, kind="stable"),
                   distinct, counts)


_BACKGROUNDS: dict[int, tuple[np.ndarray, Background]] = {}


def background_of(b: np.ndarray | None) -> Background | None:
    """``Background.of(b)``, remembered per array object."""
    if b is None:
        return None
    hit = _BACKGROUNDS.get(id(b))
    if hit is not None and hit[0] is b:
        return hit[1]
    bg = Background.of(b)
    _BACKGROUNDS.clear()  # one background in use at a time is the common case; keep memory flat
    _BACKGROUNDS[id(b)] = (b, bg)
    return bg


def _seg_sum(seg: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(seg, weights=x, minlength=n)


def _unigram_kth(ids: np.ndarray, a: np.ndarray, rest: float, Z: float, k: int, bg: Background
                 ) -> tuple[float, int, int] | None:
    """(k-th largest value of q, count above, count equal) for one unigram-rest row, or None when a value within
    ``TIE_TOLERANCE`` of the k-th largest could be decided differently by the dense path's normalizer."""
    named = set(ids.tolist())
    window = [int(v) for v in bg.order[: k + len(named)] if int(v) not in named][:k]
    wb = bg.b[window]
    wv = rest * wb / Z
    allv = np.concatenate([a, wv])
    theta = float(-np.partition(-allv, k - 1)[k - 1])
    tol = TIE_TOLERANCE * theta
    near_named = np.abs(a - theta) <= tol
    near_un = np.abs(wv - theta) <= tol
    if near_un.any():
        if near_named.any():
            return None  # a named value and a background value at the boundary
        bstar = wb[near_un]
        if (bstar != bstar[0]).any():
            return None  # two background weights give (nearly) the same value
        b0 = float(bstar[0])
        j = int(np.searchsorted(bg.distinct, b0))
        for adj in (j - 1, j + 1):  # neighbouring weights beyond the window
            if 0 <= adj < len(bg.distinct) and abs(rest * bg.distinct[adj] / Z - theta) <= tol:
                return None
        g = int((a > theta).sum() + (wv > theta).sum())
        e_un = int(bg.counts[j]) - int((bg.b[ids] == b0).sum())
        return theta, g, int((a == theta).sum()) + e_un
    return theta, int((a > theta).sum() + (wv > theta).sum()), int((a == theta).sum())


def sparse_metrics(rows: PredictionRows, logp: np.ndarray, truth_rows: np.ndarray, nxt: np.ndarray, stats: Any,
                   background: np.ndarray | None = None, *, k: int = 10) -> dict[str, np.ndarray]:
    """The decomposing metrics of sparse rows in O(named tokens): ``kl_nats``, ``reverse_kl_nats``, ``brier``,
    ``top1``, ``topk``, ``ce_realized_nats``, ``target_ce_realized_nats``, ``target_entropy_nats``, plus ``q_log_q``
    (sum q log q, for Jensen-Shannon). Row i is scored against truth row ``truth_rows[i]`` (``logp``, float32 or
    float64) with realized token ``nxt[i]``; ``stats`` are the truth constants of ``logp`` (``TruthStats``)."""
    n, V = len(rows), rows.vocab_size
    if rows.is_full.any():
        raise ValueError("sparse_metrics takes sparse rows only (see score_rows)")
    tr = np.asarray(truth_rows, dtype=np.int64)
    x = np.asarray(nxt, dtype=np.int64)
    indptr, ids, a = rows.indptr, rows.ids, rows.vals
    m = np.diff(indptr)
    seg = np.repeat(np.arange(n), m)
    uni, rest = rows.unigram.copy(), rows.rest
    bg = background_of(background) if uni.any() else None
    if uni.any() and (bg is None or stats.p_log_b is None):
        raise ValueError("rest 'unigram' needs the background and the truth constants computed with it")

    def S(v: np.ndarray) -> np.ndarray:
        return _seg_sum(seg, v, n)

    p_total, p_log_p, p_sq = stats.p_total[tr], stats.p_log_p[tr], stats.p_sq[tr]
    tn = logp[tr[seg], ids].astype(np.float64)
    fin = np.isfinite(tn)
    pn = np.exp(tn)
    log_a = np.log(a)
    if bg is not None:
        useg = uni[seg]
        wn = np.where(useg, bg.b[ids], 1.0)
        with np.errstate(invalid="ignore"):
            lwn = np.where(useg, bg.log_b[ids], 0.0)
        zero = np.zeros(n)
        p_log_b, b_p, b_t = stats.p_log_b[tr], stats.b_p[tr], stats.b_t[tr]
        Z = np.where(uni, bg.total - S(np.where(useg, wn, 0.0)), V - m)
    else:
        wn, lwn = np.ones_like(a), np.zeros_like(a)
        zero = p_log_b = b_p = b_t = np.zeros(n)
        Z = (V - m).astype(np.float64)
    c = rest / Z  # a uniform rest's value at every unnamed token: exactly the dense path's r / (V - |S|)
    log_c = np.log(c)
    P_S = S(pn)
    with np.errstate(invalid="ignore"):
        plw = np.where(pn > 0, pn * lwn, 0.0)
    kl = p_log_p - S(pn * log_a) - (p_total - P_S) * log_c - np.where(uni, p_log_b - S(plw), zero)
    with np.errstate(invalid="ignore"):
        wt = np.where(fin, wn * tn, 0.0)
    Wt = np.where(uni, b_t, stats.t_sum[tr])
    WlogW = np.where(uni, bg.log_total if bg is not None else 0.0, 0.0)
    q_log_q = S(a * log_a) + rest * log_c + c * (WlogW - S(wn * lwn))
    rkl = S(a * (log_a - tn)) + q_log_q - S(a * log_a) - c * (Wt - S(wt))
    rkl = np.where(stats.n_masked[tr] - S((~fin).astype(np.float64)) > 0, np.inf, rkl)
    W2 = np.where(uni, bg.sq_total if bg is not None else 0.0, V)
    Wp = np.where(uni, b_p, p_total)
    brier = S(a * a) + c * c * (W2 - S(wn * wn)) - 2 * (S(a * pn) + c * (Wp - S(wn * pn))) + p_sq
    key = seg * V + ids  # sorted: rows in order, ids sorted within each row
    want = np.arange(n) * V + x
    pos = np.minimum(np.searchsorted(key, want), max(len(key) - 1, 0))
    hit = (key[pos] == want) if len(key) else np.zeros(n, dtype=bool)
    un_x = np.where(uni, rest * (bg.b[x] if bg is not None else 1.0) / Z, c)
    q_x = np.where(hit, a[pos] if len(a) else 0.0, un_x)
    out = {"kl_nats": kl, "reverse_kl_nats": rkl, "brier": np.maximum(brier, 0.0), "ce_realized_nats": -np.log(q_x),
           "target_ce_realized_nats": -logp[tr, x].astype(np.float64), "target_entropy_nats": -p_log_p,
           "q_log_q": q_log_q}
    for kk in sorted({1, k}):
        out["top1" if kk == 1 else "topk"] = _sparse_topk(rows, seg, a, c, Z, uni, bg, stats, tr, kk)
    if k == 1:
        out["topk"] = out["top1"]
    return out


def _sparse_topk(rows: PredictionRows, seg: np.ndarray, a: np.ndarray, c: np.ndarray, Z: np.ndarray,
                 uni: np.ndarray, bg: Background | None, stats: Any, tr: np.ndarray, k: int) -> np.ndarray:
    """Expected top-k overlap of sparse rows (random tie-breaking), from the truth's cached top-k tokens."""
    n, V = len(rows), rows.vocab_size
    indptr = rows.indptr
    m = np.diff(indptr)
    if k not in stats.topk:
        raise ValueError(f"the truth constants hold top-k tokens for k in {sorted(stats.topk)}, not {k}")
    sp_indptr, sp_ids, sp_incl = stats.topk[k]
    sizes = np.diff(sp_indptr)[tr]
    at = np.repeat(sp_indptr[tr] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) + np.arange(int(sizes.sum()))
    s_rows, s_ids, s_incl = np.repeat(np.arange(n), sizes), sp_ids[at], sp_incl[at]
    # q at the truth's top tokens: named value, else the rest's value there
    key = seg * V + rows.ids
    want = s_rows * V + s_ids
    pos = np.minimum(np.searchsorted(key, want), max(len(key) - 1, 0))
    hit = (key[pos] == want) if len(key) else np.zeros(len(want), dtype=bool)
    un = np.where(uni[s_rows], rows.rest[s_rows] * (bg.b[s_ids] if bg is not None else 1.0) / Z[s_rows], c[s_rows])
    q_at = np.where(hit, a[pos] if len(a) else 0.0, un)
    theta, g, e = np.zeros(n), np.zeros(n), np.zeros(n)
    # uniform rest: named values and one value c held by V - |S| tokens
    U = V - m
    order = np.lexsort((-a, seg))
    a_desc = a[order]
    start = indptr[:-1]
    na = _seg_sum(seg, (a > c[seg]).astype(np.float64), n)
    ne = _seg_sum(seg, (a == c[seg]).astype(np.float64), n)
    last = max(len(a_desc) - 1, 0)
    pick_a = a_desc[np.clip(start + k - 1, 0, last)] if len(a_desc) else np.zeros(n)
    pick_c = a_desc[np.clip(start + k - U - 1, 0, last)] if len(a_desc) else np.zeros(n)
    th = np.where(k <= na, pick_a, np.where(k > na + ne + U, pick_c, c))
    gg = _seg_sum(seg, (a > th[seg]).astype(np.float64), n) + U * (c > th)
    ee = _seg_sum(seg, (a == th[seg]).astype(np.float64), n) + U * (c == th)
    theta[~uni], g[~uni], e[~uni] = th[~uni], gg[~uni], ee[~uni]
    dense_rows = []
    for i in np.flatnonzero(uni):
        lo, hi = indptr[i], indptr[i + 1]
        got = _unigram_kth(rows.ids[lo:hi], a[lo:hi], float(rows.rest[i]), float(Z[i]), k, bg)
        if got is None:
            dense_rows.append(i)
        else:
            theta[i], g[i], e[i] = got
    incl_q = inclusion(q_at, theta[s_rows], g[s_rows], e[s_rows], k)
    for i in dense_rows:  # a tie the normalizer's last bit could decide: settle it on the exact dense vector
        q = expand(rows.row(i), V, rows.background)
        th_i, g_i, e_i = kth_structure(top_candidates(q[None], k), 1, k)
        sel = s_rows == i
        incl_q[sel] = inclusion(q[s_ids[sel]], th_i[0], g_i[0], e_i[0], k)
    return np.bincount(s_rows, weights=s_incl * incl_q, minlength=n) / k


def _tv_js_chunk(rows: PredictionRows, t: np.ndarray, c: np.ndarray, bg: Background | None, p_log_p: np.ndarray,
                 q_log_q: np.ndarray, float32: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Total variation and Jensen-Shannon (bits) of sparse rows against truth rows ``t`` (r, V), without building q:
    every token first gets the rest's value c w(v), then the named tokens' terms are replaced by their own (float64).

    The bulk pass runs in float64 (exact: the dense path's values to ~1e-13), or with ``float32`` on float32 truth in
    float32 (exp, log, products; TV summed in float32 over blocks and float64 across them), about twice as fast. JS = (sum p log p + sum q log q) / 2 - sum m log m, with the first two exact (float64
    constants) and only sum m log m, m = (p + q) / 2, from float32 terms (each off by ~6e-8 m |log m|, at random),
    summed in float64, plus the first-order effect of rounding the rest's value c to float32 (the one error every
    token shares). Measured: within ~1e-7 of the float64 value (tested to 1e-6).
    """
    r, V = t.shape
    dt = np.float32 if float32 and t.dtype == np.float32 else np.float64
    if dt == np.float32 and bg is not None and rows.unigram.any():
        low = float(bg.b[bg.b > 0].min()) if (bg.b > 0).any() else 0.0
        if (np.float32(c[rows.unigram].min()) * np.float32(low)) <= np.float32(1e-30):  # float32 would underflow
            dt = np.float64
    P, U, A = scratch(chunk_rows(V), V, 3, dt)
    P, U, A = P[:r], U[:r], A[:r]
    np.exp(t, out=P, dtype=dt)  # p in the pass's dtype (0 where the target masks a token)
    m = np.diff(rows.indptr)
    seg = np.repeat(np.arange(r), m)
    ids, a = rows.ids, rows.vals
    pn = np.exp(t[seg, ids].astype(np.float64))  # p at the named tokens, exactly
    cd = c.astype(dt)
    b = bg.b.astype(dt) if bg is not None and rows.unigram.any() else None
    for i in range(r):  # the rest's value at every token: c (a scalar) or c b
        if rows.unigram[i]:
            np.multiply(b, cd[i], out=U[i])
            np.subtract(P[i], U[i], out=A[i])
        else:
            np.subtract(P[i], cd[i], out=A[i])
    np.abs(A, out=A)
    tv_named = _seg_sum(seg, np.abs(a - pn) - A[seg, ids].astype(np.float64), r)
    tv = 0.5 * (rowsum(A) + tv_named)
    for i in range(r):
        np.add(P[i], U[i] if rows.unigram[i] else cd[i], out=A[i])
    A *= dt(0.5)  # m = (p + q) / 2 with the rest's value everywhere
    np.log(A, out=U)  # log m
    corr = np.zeros(r)
    dc = c - cd.astype(np.float64)  # the rest's value rounded to the bulk dtype: one systematic error per row
    if dc.any():  # first order: sum m log m moves by sum over unnamed tokens of (dc w / 2)(1 + log m)
        w_log_m = np.array([float(np.einsum("j,j->", U[i], b, dtype=np.float64)) if rows.unigram[i] else 0.0
                            for i in range(r)])
        plain = ~rows.unigram
        if plain.any():
            w_log_m[plain] = rowsum(U)[plain]
        wn = np.where(rows.unigram[seg], bg.b[ids] if bg is not None else 1.0, 1.0)
        w_log_m -= _seg_sum(seg, wn * U[seg, ids].astype(np.float64), r)
        w_un = np.where(rows.unigram, (bg.total if bg is not None else 0.0) - _seg_sum(seg, np.where(
            rows.unigram[seg], wn, 0.0), r), V - m)
        corr = 0.5 * dc * (w_un + w_log_m)
    np.multiply(A, U, out=U)  # m log m
    m1 = 0.5 * (pn + a)
    m_log_m = (U.sum(axis=1, dtype=np.float64)  # float64 accumulation: float32 blocks lose ~1e-7 of ~5 nats here
               + _seg_sum(seg, m1 * np.log(m1) - U[seg, ids].astype(np.float64), r) + corr)
    js = np.clip((p_log_p + q_log_q - 2 * m_log_m) / (2 * LN2), 0.0, 1.0)
    return tv, js


def score_rows(rows: PredictionRows, logp: np.ndarray, nxt: np.ndarray, stats: Any, *, truth_rows: Any = None,
               k: int = 10, tv_js: bool = True, tv_js_float32: bool = False) -> dict[str, np.ndarray]:
    """Every metric of validated rows (``metric_columns(k, tv_js=tv_js)``): sparse rows in O(named tokens) (plus the
    bulk dense pass for total variation and Jensen-Shannon when ``tv_js``), whole rows on the dense kernels.

    Row i is scored against truth row ``truth_rows[i]`` (default i) of ``logp`` with realized token ``nxt[that row]``;
    ``stats`` (``TruthStats`` of ``logp``, holding the top-k tokens for 1 and k) come from ``tasks.truth_stats``.
    ``tv_js_float32`` runs the sparse rows' TV/JS pass in float32 (about twice as fast, within ~1e-7 of the exact
    values). Memory: the rows, the outputs and chunk-sized buffers per thread.
    """
    n, V = len(rows), rows.vocab_size
    if logp.ndim != 2 or logp.shape[1] != V:
        raise ValueError(f"truth has shape {logp.shape}; predictions are over {V} tokens")
    if not 1 <= k <= V:
        raise ValueError(f"k must be between 1 and the vocabulary size {V}, got {k}")
    tr = np.arange(n) if truth_rows is None else np.asarray(truth_rows, dtype=np.int64)
    nxt = np.asarray(nxt, dtype=np.int64)
    cols = ["kl_nats", "reverse_kl_nats", "brier", "top1", "topk", "ce_realized_nats", "target_ce_realized_nats",
            "target_entropy_nats", *(("js_bits", "tv") if tv_js else ())]
    out = {c: np.empty(n) for c in cols}
    full = rows.is_full
    sp = np.flatnonzero(~full)
    if sp.size:
        sub = rows.take(sp)
        got = sparse_metrics(sub, logp, tr[sp], nxt[tr[sp]], stats, rows.background, k=k)
        for c in cols:
            if c in got:
                out[c][sp] = got[c]
        if tv_js:
            uni = sub.unigram
            bg = background_of(rows.background) if uni.any() else None
            m = np.diff(sub.indptr)
            if bg is not None:
                seg = np.repeat(np.arange(len(sub)), m)
                Z = np.where(uni, bg.total - _seg_sum(seg, np.where(uni[seg], bg.b[sub.ids], 0.0), len(sub)), V - m)
            else:
                Z = (V - m).astype(np.float64)
            c_all = sub.rest / Z

            def tvjs(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
                part = sub.take(np.arange(a, b))
                return _tv_js_chunk(part, logp[tr[sp[a:b]]], c_all[a:b], bg, -got["target_entropy_nats"][a:b],
                                    got["q_log_q"][a:b], tv_js_float32)

            parts = run_chunks(tvjs, len(sp), chunk_rows(V))
            out["tv"][sp] = np.concatenate([p[0] for p in parts])
            out["js_bits"][sp] = np.concatenate([p[1] for p in parts])
    dn = np.flatnonzero(full)
    if dn.size:
        fi = rows.full_index[dn]

        def dense(a: int, b: int) -> dict[str, np.ndarray]:
            rr = tr[dn[a:b]]
            return _dense_chunk(logp[rr], rows.full[fi[a:b]], nxt[rr], k, stats.take(rr), tv_js, int(a))

        parts = run_chunks(dense, len(dn), chunk_rows(V))
        for c in cols:
            out[c][dn] = np.concatenate([p[c] for p in parts])
    return assemble([out], k, tv_js=tv_js)
