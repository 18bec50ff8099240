"""Per-prompt constants of the truth, computed once per suite split and cached beside the truth (hash-checked).

Most predictions name a few tokens S and spread the rest r by a rule with weights w (uniform: w = 1; unigram: w = b,
the suite's background): q(v) = a(v) on S and c w(v) elsewhere, with c = r / sum_{v not in S} w(v). KL(p||q),
reverse KL, Brier, cross-entropy and top-k overlap are then sums over S plus per-prompt constants of the truth p
(and of w), so a sparse prediction is scored in O(|S|) (``evals.sparse``). The constants, per prompt, in float64:

- ``p_total`` = sum p (float32 truth sums to 1 only within ~1e-6: the exact sum is used, not 1), ``p_log_p`` =
  sum p log p (0 log 0 = 0), ``p_sq`` = sum p^2, ``n_masked`` = number of tokens with log-probability -inf,
  ``t_sum`` = sum of the finite log-probabilities (uniform rest: sum_v w(v) log p(v) over finite entries);
- with a background b: ``p_log_b`` = sum p log b, ``b_p`` = sum b p, ``b_t`` = sum of b log p over finite entries;
  and the background's own ``b_sum``, ``b_sq`` = sum b^2, ``b_log_b`` = sum b log b;
- ``topk[k]``: the tokens that may be among the target's k largest, with their probability of being so under random
  tie-breaking (``evals.metrics.topk_inclusion``), in CSR form (usually exactly k tokens a prompt).

Cache: ``<truth dir>/stats-<split>-<sha16>.npz`` and ``stats-<split>.json`` (written last, atomically: format, key,
file, sha256). The key is sha256 over the format, the truth's content (the sha256 the truth record gives for the
split's file, which ``Suite.truth_split`` verifies on load; or, without one, a sha256 of the array), its shape, the
background's bytes and the k values; a load checks the key and the file's sha256 and recomputes on any mismatch (new
truth, new background, a corrupted or edited file). Computing costs one float64 pass over the split (~0.2 ms a
prompt at 49k tokens, on a thread pool).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_bytes, atomic_write_json, read_json
from .paths import sha256_file

FORMAT = "logitpred-truth-stats/1"
KS = (1, 10)  # top-k inclusion kept for these k (top-1 agreement, top-10 overlap)
PER_PROMPT = ("p_total", "p_log_p", "p_sq", "n_masked", "t_sum", "p_log_b", "b_p", "b_t")


@dataclass
class TruthStats:
    """The constants of one split (see the module docstring); arrays have one entry per prompt, in split order."""

    vocab_size: int
    p_total: np.ndarray
    p_log_p: np.ndarray
    p_sq: np.ndarray
    n_masked: np.ndarray
    t_sum: np.ndarray
    p_log_b: np.ndarray | None = None  # None without a background
    b_p: np.ndarray | None = None
    b_t: np.ndarray | None = None
    b_sum: float = float("nan")
    b_sq: float = float("nan")
    b_log_b: float = float("nan")
    topk: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)  # k -> indptr, ids, incl
    key: str = ""

    def __len__(self) -> int:
        return len(self.p_total)

    def take(self, rows: np.ndarray | Sequence[int] | slice) -> TruthStats:
        """The constants of prompts ``rows`` (index array or slice), in that order."""
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        per = {name: (None if getattr(self, name) is None else getattr(self, name)[rows]) for name in PER_PROMPT}
        topk = {}
        for k, (indptr, ids, incl) in self.topk.items():
            sizes = np.diff(indptr)[rows]
            new = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(sizes, out=new[1:])
            at = np.repeat(indptr[rows] - new[:-1], sizes) + np.arange(int(new[-1]))
            topk[k] = (new, ids[at], incl[at])
        return TruthStats(self.vocab_size, **per, b_sum=self.b_sum, b_sq=self.b_sq, b_log_b=self.b_log_b, topk=topk,
                          key=self.key)


def topk_support(logp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, token ids, inclusion probability) of the tokens with a non-zero chance of being among each row's
    k largest under random tie-breaking: certain above the k-th largest value, ``(k - above) / equal`` at it."""
    logp = np.asarray(logp)
    if not 1 <= k <= logp.shape[1]:
        raise ValueError(f"k must be between 1 and the vocabulary size {logp.shape[1]}, got {k}")
    return support(top_candidates(logp, k), len(logp), k)


def _stats_chunk(t: np.ndarray, b: np.ndarray | None, log_b: np.ndarray | None, ks: Sequence[int]) -> dict[str, Any]:
    r, V = t.shape
    P, T = (s[:r] for s in scratch(chunk_rows(V), V, 2))
    np.copyto(T, t)
    np.exp(T, out=P)
    masked = np.isneginf(T)
    n_masked = masked.sum(axis=1)
    if n_masked.any():
        T[masked] = 0.0  # 0 log 0 = 0
    out = {"p_total": P.sum(axis=1), "p_log_p": np.einsum("ij,ij->i", P, T), "p_sq": np.einsum("ij,ij->i", P, P),
           "n_masked": n_masked, "t_sum": T.sum(axis=1)}
    if b is not None:
        if (b > 0).all():  # einsum, not BLAS: a threaded gemv spins against the chunk threads
            out["p_log_b"] = np.einsum("ij,j->i", P, log_b)
        else:
            with np.errstate(invalid="ignore"):
                out["p_log_b"] = np.where(P > 0, P * log_b, 0.0).sum(axis=1)
        out["b_p"], out["b_t"] = np.einsum("ij,j->i", P, b), np.einsum("ij,j->i", T, b)
    cand = top_candidates(t, max(ks))
    out["topk"] = {k: support(cand, r, k) for k in ks}
    return out


def compute_stats(logp: np.ndarray, background: np.ndarray | None = None, ks: Sequence[int] = KS) -> TruthStats:
    """The constants of ``logp`` (float32 or float64 ``(n, V)`` natural-log probabilities, ``-inf`` allowed), in
    float64: one pass in cache-sized chunks on a thread pool."""
    logp = np.asarray(logp)
    n, V = logp.shape
    ks = sorted(set(ks))
    for k in ks:
        if not 1 <= k <= V:
            raise ValueError(f"k must be between 1 and the vocabulary size {V}, got {k}")
    b = log_b = None
    if background is not None:
        b = np.ascontiguousarray(background, dtype=np.float64)
        if b.shape != (V,):
            raise ValueError(f"background has shape {b.shape}, the truth's vocabulary {V}")
        with np.errstate(divide="ignore"):
            log_b = np.log(b)
    parts = run_chunks(lambda a, z: _stats_chunk(logp[a:z], b, log_b, ks), n, chunk_rows(V))
    cols = {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0)
            for name in PER_PROMPT if b is not None or name not in ("p_log_b", "b_p", "b_t")}
    topk = {}
    for k in ks:
        sizes = np.concatenate([np.diff(p["topk"][k][0]) for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        topk[k] = (indptr, np.concatenate([p["topk"][k][1] for p in parts]) if parts else np.zeros(0, dtype=np.int64),
                   np.concatenate([p["topk"][k][2] for p in parts]) if parts else np.zeros(0))
    stats = TruthStats(V, **cols, topk=topk)
    if b is not None:
        stats.b_sum, stats.b_sq = float(b.sum()), float((b * b).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.b_log_b = float(np.where(b > 0, b * np.log(b), 0.0).sum())
    return stats


# --- chunked kernels: threads, scratch buffers, top-k candidates (shared with evals.metrics and evals.sparse) ------
CHUNK_ELEMENTS = 1 << 17  # vocabulary entries per chunk: (rows, V) float64 buffers of ~1 MiB (L2 holds a few)
THREADS = 0  # worker threads for chunks; 0: the CPUs this process may use
_LOCAL = threading.local()
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool): kept between calls, forgotten in a fork
_POOL_LOCK = threading.Lock()


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk for a vocabulary size: ``CHUNK_ELEMENTS`` entries, at least one row."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def n_threads() -> int:
    """Worker threads for chunked kernels (``THREADS``, else the CPUs available to this process)."""
    if THREADS:
        return THREADS
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_chunks(fn: Callable[[int, int], Any], n: int, step: int) -> list[Any]:
    """``[fn(start, stop) for each chunk]`` in order, on ``n_threads()`` threads when there is more than one chunk.

    Workers take runs of up to 8 consecutive chunks at a time from a shared queue: little scheduling per chunk, and a
    worker slowed by other load on its core simply takes fewer runs. The workers are kept between calls (``_pool``),
    and with them their scratch buffers: a caller scoring a stream chunk by chunk (``evals.stream_scoring``) does not
    pay new threads and the first touch of new buffers on every call. A call from a worker runs in that worker."""
    bounds = [(i, min(n, i + step)) for i in range(0, n, step)]
    workers = min(n_threads(), len(bounds))
    if workers <= 1 or getattr(_LOCAL, "worker", False):
        return [fn(a, b) for a, b in bounds]
    per = max(1, min(8, len(bounds) // (4 * workers)))
    runs = [bounds[i : i + per] for i in range(0, len(bounds), per)]
    return [out for run in _pool(workers).map(lambda rb: [fn(a, b) for a, b in rb], runs) for out in run]


def _pool(workers: int) -> ThreadPoolExecutor:
    """This process's chunk workers, at least ``workers`` of them (a forked child starts its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] < workers:
            if _POOL is not None:
                _POOL[1].shutdown(wait=False)
            _POOL = (workers, ThreadPoolExecutor(workers, thread_name_prefix="chunks", initializer=_mark_worker))
        return _POOL[1]


def _forget_pool() -> None:
    """In a forked child: the parent's workers are not there (nor may its lock be free)."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _mark_worker() -> None:
    _LOCAL.worker = True


def scratch(rows: int, vocab_size: int, n: int, dtype: Any = np.float64) -> list[np.ndarray]:
    """``n`` scratch arrays of shape ``(rows, vocab_size)`` (float64 or float32), reused across calls in a thread."""
    caches = getattr(_LOCAL, "scratch", None)
    if caches is None:
        caches = _LOCAL.scratch = {}
    key = np.dtype(dtype).str
    cache = caches.get(key)
    if cache is None or cache[0] != (rows, vocab_size) or len(cache[1]) < n:
        cache = caches[key] = ((rows, vocab_size), [np.empty((rows, vocab_size), dtype=dtype) for _ in range(n)])
    return cache[1][:n]


def rowsum(x: np.ndarray) -> np.ndarray:
    """Row sums of a contiguous (r, V) array in float64: a float32 array is summed in float32 over blocks of
    ``block_size(V)`` entries (numpy's pairwise summation), and the blocks in float64."""
    r, V = x.shape
    blk = block_size(V)
    if x.dtype == np.float32 and blk:
        return x.reshape(r, V // blk, blk).sum(axis=2).sum(axis=1, dtype=np.float64)
    return x.sum(axis=1, dtype=np.float64)


def block_size(vocab_size: int) -> int:
    """A divisor of ``vocab_size`` in [64, 1024] (the largest), for block maxima; 0 if there is none."""
    for b in range(min(1024, vocab_size), 63, -1):
        if vocab_size % b == 0:
            return b
    return 0


def top_candidates(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every entry of each row of ``x`` (shape (r, V)) that is >= the row's k-th largest value, and possibly a few
    more, as (rows, cols, values) sorted by row, then value descending, then column. Exact and cheap: the k-th largest
    block maximum bounds the k-th largest value from below, so only the blocks whose maximum reaches that bound are
    searched, and only the entries above it are sorted."""
    r, V = x.shape
    blk = block_size(V)
    nb = V // blk if blk else 0
    if nb > k:
        blocks = x.reshape(r, nb, blk)
        bm = blocks.max(axis=2)
        low = np.partition(bm, nb - k, axis=1)[:, nb - k]
        brow, bidx = np.nonzero(bm >= low[:, None])
        sub = blocks[brow, bidx]  # (selected blocks, blk)
        i, j = np.nonzero(sub >= low[brow][:, None])
        rows, cols = brow[i], bidx[i] * blk + j
        vals = sub[i, j]
    else:
        low = np.partition(x, V - k, axis=1)[:, V - k]
        rows, cols = np.nonzero(x >= low[:, None])
        vals = x[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    return rows[order], cols[order], vals[order]


def kth_structure(cand: tuple[np.ndarray, np.ndarray, np.ndarray], r: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k-th largest value, count above it, count equal to it) per row, from ``top_candidates`` for some k' >= k."""
    rows, _, vals = cand
    start = np.searchsorted(rows, np.arange(r))
    theta = vals[start + k - 1]
    g = np.bincount(rows, weights=vals > theta[rows], minlength=r)
    e = np.bincount(rows, weights=vals == theta[rows], minlength=r)
    return theta, g, e


def inclusion(values: np.ndarray, theta: np.ndarray, g: np.ndarray, e: np.ndarray, k: int) -> np.ndarray:
    """P(in the top k) of entries with ``values`` in rows whose k-th largest is ``theta`` (g above it, e equal to it),
    under random tie-breaking: 1 above, ``(k - g) / e`` at it, 0 below."""
    share = np.divide(k - g, e, out=np.zeros(np.shape(e)), where=np.asarray(e) > 0)
    return np.where(values > theta, 1.0, np.where(values == theta, share, 0.0))


def support(cand: tuple[np.ndarray, np.ndarray, np.ndarray], r: int, k: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, ids, inclusion) of the tokens with a non-zero chance of being among each row's k largest."""
    rows, cols, vals = cand
    theta, g, e = kth_structure(cand, r, k)
    keep = vals >= theta[rows]
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    indptr = np.zeros(r + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=r), out=indptr[1:])
    return indptr, cols.astype(np.int64), inclusion(vals, theta[rows], g[rows], e[rows], k)


# --- cache --------------------------------------------------------------------------------------------------------
_MEMO: dict[tuple[int, str], tuple[Any, str]] = {}  # id(logp) -> (weakref to it, its sha256): one hash per process


def _truth_hash(logp: np.ndarray) -> str:
    """sha256 of the truth array's bytes, remembered for the life of the array object."""
    entry = _MEMO.get((id(logp), "h"))
    if entry is not None and entry[0]() is logp:
        return entry[1]
    h = hashlib.sha256(str((logp.dtype.str, logp.shape)).encode())
    h.update(memoryview(np.ascontiguousarray(logp)).cast("B"))
    digest = h.hexdigest()
    for key in [k for k, (ref, _) in _MEMO.items() if ref() is None]:
        del _MEMO[key]
    _MEMO[(id(logp), "h")] = (weakref.ref(logp), digest)
    return digest


def stats_key(logp: np.ndarray, background: np.ndarray | None, ks: Sequence[int], identity: str | None = None) -> str:
    """The cache key: format, truth content (``identity``, a verified hash of it, or a sha256 of ``logp``), background
    bytes, k values."""
    h = hashlib.sha256(FORMAT.encode())
    h.update((identity or _truth_hash(logp)).encode())
    h.update(str((logp.dtype.str, logp.shape)).encode())
    if background is not None:
        h.update(hashlib.sha256(np.ascontiguousarray(background, dtype=np.float64).tobytes()).digest())
    h.update(repr(sorted(set(ks))).encode())
    return h.hexdigest()


def _to_bytes(stats: TruthStats) -> bytes:
    arrays: dict[str, np.ndarray] = {name: getattr(stats, name) for name in PER_PROMPT if getattr(stats, name) is not None}
    arrays["background"] = np.array([stats.b_sum, stats.b_sq, stats.b_log_b])
    arrays["vocab_size"] = np.array([stats.vocab_size])
    for k, (indptr, ids, incl) in stats.topk.items():
        arrays[f"top{k}_indptr"], arrays[f"top{k}_ids"], arrays[f"top{k}_incl"] = indptr, ids, incl
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _from_file(path: Path, key: str) -> TruthStats:
    with np.load(path, allow_pickle=False) as z:
        a = {name: z[name] for name in z.files}
    ks = sorted(int(name[3:-7]) for name in a if name.endswith("_indptr"))
    b_sum, b_sq, b_log_b = (float(x) for x in a["background"])
    return TruthStats(int(a["vocab_size"][0]), **{name: a.get(name) for name in PER_PROMPT}, b_sum=b_sum, b_sq=b_sq,
                      b_log_b=b_log_b, topk={k: (a[f"top{k}_indptr"], a[f"top{k}_ids"], a[f"top{k}_incl"]) for k in ks},
                      key=key)


def cached_stats(folder: Path, split: str, logp: np.ndarray, background: np.ndarray | None = None,
                 ks: Sequence[int] = KS, *, identity: str | None = None) -> TruthStats:
    """The constants of ``logp``, read from ``folder`` when its record's key and file hash match, else computed and
    written there (atomically; an unwritable folder only costs the recomputation next time). ``identity``: a hash of
    the truth already verified by whoever loaded it (else ``logp`` is hashed, ~1 s for 2 GB)."""
    folder, key = Path(folder), stats_key(logp, background, ks, identity)
    record_path = folder / f"stats-{split}.json"
    try:
        record = read_json(record_path) if record_path.is_file() else None
    except ValueError:
        record = None
    if isinstance(record, dict) and record.get("format") == FORMAT and record.get("key") == key:
        path = folder / str(record.get("file"))
        if path.is_file() and sha256_file(path) == record.get("sha256"):
            try:
                return _from_file(path, key)
            except (OSError, ValueError, KeyError):
                pass  # unreadable despite its hash (never expected): recompute
    stats = compute_stats(logp, background, ks)
    stats.key = key
    data = _to_bytes(stats)
    sha = hashlib.sha256(data).hexdigest()
    name = f"stats-{split}-{sha[:16]}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            atomic_write_bytes(folder / name, data)
            atomic_write_json(record_path, {"format": FORMAT, "split": split, "key": key, "file": name, "sha256": sha})
            for old in folder.glob(f"stats-{split}-*.npz"):
                if old.name != name:
                    old.unlink(missing_ok=True)
    except OSError:
        pass
    return stats


def truth_stats(suite: Any, split: str, ks: Sequence[int] = KS) -> TruthStats:
    """The constants of a suite split (truth through ``Suite.truth_split``, background ``Suite.background``), cached
    in ``Suite.truth_dir``. The truth is identified by the sha256 its record gives for the split's file, which
    ``truth_split`` has just checked the file against; without such a record, by a sha256 of the array."""
    _, logp, _ = suite.truth_split(split)
    identity = None
    try:
        entry = suite.truth_record()["files"][split]
        if isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64:
            identity = "truth-file:" + entry["sha256"]
    except (AttributeError, KeyError, TypeError, ValueError):
        identity = None
    return cached_stats(suite.truth_dir, split, logp, suite.background, ks, identity=identity)
