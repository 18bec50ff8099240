"""Compact truth: log-probabilities stored as float16 (2 bytes per vocabulary entry), and the error that costs.

A split's exact truth is float32 log-probabilities ``a`` (``(n, vocab)``, logsumexp 0 per row). What is stored is
``q = float16(a)`` (round to nearest; values below float16's range, -65504 nats, become -inf: their probability is 0 in
float64 as well) and, per row, ``logz = log sum exp(q)`` (float32, computed in float64). The *stored distribution* is
``q - logz``: normalized exactly, so every metric sees a proper distribution.

Error bound. float16 keeps 11 significant bits: ``|q_i - a_i| <= 2^-11 |a_i|``. The KL between exact and stored is
``KL(a || q - logz) = sum_i p_i (a_i - q_i) + logz``, second order in the rounding (first-order terms cancel through
the renormalization): tokens near probability 1 have ``|a_i|`` near 0 and tiny absolute error, tokens with large
``|a_i|`` carry little probability. Measured on the wiki suite with SmolLM2-135M: see docs/truth.md; ``write_truth``
records the mean and largest per-row storage KL and refuses to store truth whose mean exceeds ``MAX_STORAGE_KL``.
"""

from __future__ import annotations

import numpy as np

STORED_DTYPE = np.float16
BYTES_PER_ENTRY = np.dtype(STORED_DTYPE).itemsize
MAX_STORAGE_KL = 1e-4
# Entry-wise: a stored log-probability lies within STORED_RTOL * |a| + STORED_ATOL of any float32 computation ``a`` of it
# (half a float16 ulp of rounding, 2^-11 relative, plus one ulp where another machine's rounding flips it; the
# renormalization ``logz`` adds ~1e-5 nats).
STORED_RTOL = 2.0**-10
STORED_ATOL = 1e-4  # nats: the bound on the mean per-row KL(exact || stored) that write_truth enforces
# nats: the largest per-row KL(recomputed exact || stored) a recomputation may show and still verify against the
# commitment. It must cover the storage error (float16 rounding, up to ~1e-5 per row measured on wiki) plus float
# rounding of another machine (batch shapes, BLAS, CPU vs GPU in float32: ~1e-9); a real change of prompts, target or
# precision moves rows by 1e-3 nats and more (bfloat16 vs float32: see docs/truth.md).
VERIFY_MAX_KL = 1e-4
CHUNK_ROWS = 64  # rows per chunk of float64 work: (64, 262144) float64 is 128 MiB


def quantize(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, logz)``: ``q`` float16 ``(n, vocab)`` the rounded log-probabilities, ``logz`` float32 ``(n,)`` the log of
    each row's stored mass ``log sum_i exp(q_i)`` (float64 sum). ``logp``: float32 ``(n, vocab)``, natural log.
    Raises ``ValueError`` for a non-2-D array or a row of stored mass 0 (every entry below -65504: no distribution)."""
    logp = np.asarray(logp)
    if logp.ndim != 2:
        raise ValueError(f"log-probabilities must be 2-D (prompts, vocab), got shape {logp.shape}")
    with np.errstate(over="ignore"):
        q = logp.astype(STORED_DTYPE)
    logz = np.empty(len(q), dtype=np.float64)
    for a in range(0, len(q), CHUNK_ROWS):
        with np.errstate(divide="ignore"):
            logz[a : a + CHUNK_ROWS] = np.log(np.exp(q[a : a + CHUNK_ROWS].astype(np.float64)).sum(axis=1))
    if not np.isfinite(logz).all():
        row = int(np.flatnonzero(~np.isfinite(logz))[0])
        raise ValueError(f"row {row} has no mass left in float16 (every log-probability below -65504 or NaN)")
    return q, logz.astype(np.float32)


def dequantize(q: np.ndarray, logz: np.ndarray) -> np.ndarray:
    """The stored distribution, float32 ``(n, vocab)`` natural-log probabilities ``q - logz`` (logsumexp 0 per row up
    to float32 rounding). ``q``: float16 ``(n, vocab)`` (may be a memory map, read chunk by chunk); ``logz``: ``(n,)``."""
    out = np.empty(q.shape, dtype=np.float32)
    for a in range(0, len(q), CHUNK_ROWS):
        np.subtract(q[a : a + CHUNK_ROWS], logz[a : a + CHUNK_ROWS, None], out=out[a : a + CHUNK_ROWS],
                    dtype=np.float32)
    return out


def row_kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """Per-row KL divergence ``KL(p || q) = sum_i p_i (log p_i - log q_i)`` in nats, float64 ``(n,)``, for natural-log
    probabilities ``logp``, ``logq`` of shape ``(n, vocab)`` (any float dtype; computed in float64 by chunks).
    Terms with ``p_i = 0`` count 0 (0 log 0 = 0); ``p_i > 0`` where ``q_i = 0`` gives +inf. Raises ``ValueError`` for
    arrays of different shapes."""
    if logp.shape != logq.shape or logp.ndim != 2:
        raise ValueError(f"KL needs two arrays of one (n, vocab) shape, got {logp.shape} and {logq.shape}")
    out = np.empty(len(logp), dtype=np.float64)
    for a in range(0, len(logp), CHUNK_ROWS):
        la = logp[a : a + CHUNK_ROWS].astype(np.float64)
        lb = logq[a : a + CHUNK_ROWS].astype(np.float64)
        p = np.exp(la)
        with np.errstate(invalid="ignore"):
            out[a : a + CHUNK_ROWS] = np.where(p > 0, p * (la - lb), 0.0).sum(axis=1)
    return out


def storage_error(logp: np.ndarray, q: np.ndarray, logz: np.ndarray) -> np.ndarray:
    """Per-row ``KL(exact || stored)`` in nats, float64 ``(n,)``: what storing ``logp`` as ``quantize(logp)`` loses."""
    return row_kl(logp, dequantize(q, logz))
