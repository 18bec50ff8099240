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
"""

from __future__ import annotations

import numpy as np

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


def per_prompt_metrics(truth_logp: np.ndarray, pred_p: np.ndarray, next_token_ids: np.ndarray, *,
                       k: int = 10) -> dict[str, np.ndarray]:
    """All metrics for a batch, as columns. Target-side columns (``target_*``) do not depend on the prediction."""
    b = _Batch(truth_logp, pred_p)
    kl = b.kl()
    tv, brier = b.tv_and_brier()
    rows = np.arange(b.q.shape[0])
    ids = np.asarray(next_token_ids, dtype=np.int64)
    return {
        "kl_nats": kl,
        "kl_bits": kl / LN2,
        "reverse_kl_nats": b.reverse_kl(),
        "js_bits": b.js(),
        "tv": tv,
        "brier": brier,
        "top1": b.top1(),
        f"top{k}_overlap": b.topk(k),
        "ce_realized_nats": cross_entropy_loss(b.q, ids),
        "target_ce_realized_nats": -b.t[rows, ids],
        "target_entropy_nats": b.entropy(),
    }
