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
file, sha256). The key is sha256 over the format, the truth's content (log-probabilities as loaded through
``Suite.truth_split``), the background's bytes and the k values; a load checks the key and the file's sha256 and
recomputes on any mismatch (new truth, new background, a corrupted or edited file). Computing costs one float64 pass
over the split (~0.1 ms a prompt at 49k tokens); checking the key costs one sha256 over the truth (~2 GB/s).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_bytes, atomic_write_json, read_json
from .paths import sha256_file

FORMAT = "logitpred-truth-stats/1"
KS = (1, 10)  # top-k inclusion kept for these k (top-1 agreement, top-10 overlap)
CHUNK = 16  # prompts per float64 pass: (16, 49k) float64 arrays stay in L2/L3
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
    import torch

    n, V = logp.shape
    if not 1 <= k <= V:
        raise ValueError(f"k must be between 1 and the vocabulary size {V}, got {k}")
    t = torch.from_numpy(np.ascontiguousarray(logp))
    kth = torch.topk(t, k, dim=1).values[:, k - 1 : k]
    above, equal = t > kth, t == kth
    g = above.sum(1, keepdim=True).to(torch.float64)
    e = equal.sum(1, keepdim=True).to(torch.float64)
    rows, cols = torch.nonzero(above | equal, as_tuple=True)
    share = ((k - g) / e).squeeze(1)
    incl = torch.where(above[rows, cols], torch.ones((), dtype=torch.float64), share[rows])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows.numpy(), minlength=n), out=indptr[1:])
    return indptr, cols.numpy().astype(np.int64), incl.numpy()


def compute_stats(logp: np.ndarray, background: np.ndarray | None = None, ks: Sequence[int] = KS, *,
                  chunk: int = CHUNK) -> TruthStats:
    """The constants of ``logp`` (float32 ``(n, V)`` natural-log probabilities, ``-inf`` allowed), in float64."""
    import torch

    logp = np.asarray(logp)
    n, V = logp.shape
    out = {name: np.zeros(n) for name in PER_PROMPT}
    out["n_masked"] = np.zeros(n, dtype=np.int64)
    b = log_b = None
    if background is not None:
        b = torch.from_numpy(np.ascontiguousarray(background, dtype=np.float64))
        if b.shape != (V,):
            raise ValueError(f"background has shape {tuple(b.shape)}, the truth's vocabulary {V}")
        with np.errstate(divide="ignore"):
            log_b = torch.log(b)
    zero = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for i in range(0, n, chunk):
            t = torch.from_numpy(logp[i : i + chunk]).to(torch.float64)
            masked = torch.isneginf(t)
            p = torch.exp(t)
            t0 = t.masked_fill(masked, 0.0)
            s = slice(i, i + len(t))
            out["p_total"][s] = p.sum(1).numpy()
            out["p_log_p"][s] = (p * t0).sum(1).numpy()
            out["p_sq"][s] = (p * p).sum(1).numpy()
            out["n_masked"][s] = masked.sum(1).numpy()
            out["t_sum"][s] = t0.sum(1).numpy()
            if b is not None:
                plb = torch.where(p > 0, p * log_b, zero) if bool((b <= 0).any()) else p @ log_b
                out["p_log_b"][s] = (plb.sum(1) if plb.ndim == 2 else plb).numpy()
                out["b_p"][s] = (p @ b).numpy()
                out["b_t"][s] = (t0 @ b).numpy()
    stats = TruthStats(V, **{k: v for k, v in out.items() if k in PER_PROMPT[:5]},
                       topk={k: topk_support(logp, k) for k in sorted(set(ks))})
    if b is not None:
        bn = b.numpy()
        stats.p_log_b, stats.b_p, stats.b_t = out["p_log_b"], out["b_p"], out["b_t"]
        stats.b_sum, stats.b_sq = float(bn.sum()), float((bn * bn).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.b_log_b = float(np.where(bn > 0, bn * np.log(bn), 0.0).sum())
    return stats


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


def stats_key(logp: np.ndarray, background: np.ndarray | None, ks: Sequence[int]) -> str:
    """The cache key: format, truth content, background bytes, k values."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(_truth_hash(logp).encode())
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
                 ks: Sequence[int] = KS) -> TruthStats:
    """The constants of ``logp``, read from ``folder`` when its record's key and file hash match, else computed and
    written there (atomically; an unwritable folder only costs the recomputation next time)."""
    folder, key = Path(folder), stats_key(logp, background, ks)
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
    in ``Suite.truth_dir``."""
    _, logp, _ = suite.truth_split(split)
    return cached_stats(suite.truth_dir, split, logp, suite.background, ks)
