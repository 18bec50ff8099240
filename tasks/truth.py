"""How the target's truth is stored, committed and verified (computed in ``tasks.compute``).

Storage (``<truth dir>/``): one safetensors file per split, named by its content hash (``practice-<sha16>.safetensors``):
``logp_f16`` float16 log-probabilities ``(n, vocab)`` (2 bytes per vocabulary entry), ``logz`` float32 ``(n,)`` the
log-mass of each stored row, ``next_token_id`` int64 ``(n,)``; the stored distribution is ``logp_f16 - logz``
(``tasks.quantize``: its KL from the exact float32 truth is measured at write time, recorded, and bounded). Files are
memory-mapped on load after their sha256 is checked. ``truth.json`` is written last and atomically: it names the array
files with their sha256, records the target's identity and placement (device, dtype), the storage error, the committed
header and the commitment. It is the single commit point: a process killed at any moment leaves the previous record
(whose files are still there: superseded files are deleted only after the new record is in place) or the new one.

The commitment (``commitment_of``): sha256 over the committed header (format, sealed prompts' sha256, target weights'
and tokenizer's sha256, the dtype the target ran in, stored dtype, shape), then the stored float16 sealed
log-probabilities and the realized ids. It binds exactly the stored bytes, so it is checked by hashing
(``Suite.verify_commitment``). Recomputing truth on other hardware changes float rounding, so a recomputation is not
hashed but compared: ``Suite.verify_recomputed`` recomputes every row and accepts it when ``KL(recomputed || stored)``
is at most ``tasks.quantize.VERIFY_MAX_KL`` per row; other prompts, another target or another dtype fail the
header, and a real change of truth fails the tolerance.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_bytes, atomic_write_json, crash_point, loads_json, read_json
from .paths import sha256_file
from .quantize import BYTES_PER_ENTRY, MAX_STORAGE_KL, STORED_DTYPE, dequantize, quantize, storage_error

TRUTH_FORMAT = "logitpred-truth/3"
RECORD = "truth.json"
SPLITS = ("practice", "sealed")


class SuiteError(ValueError):
    """A suite or its truth is missing, stale or inconsistent; the message names the command that fixes it."""


def committed_header(*, sealed_prompts_sha256: str, target: Mapping[str, Any], dtype: str,
                     shape: Sequence[int]) -> dict[str, Any]:
    """What the commitment binds besides the arrays: the truth format, the sealed prompts' sha256, the target's
    weights and tokenizer hashes, the dtype the target ran in, the stored dtype and the array shape ``(n, vocab)``.
    Not the device: a CPU and a GPU differ only by float rounding, which verification tolerates."""
    return {"format": TRUTH_FORMAT, "sealed_prompts_sha256": sealed_prompts_sha256,
            "target": {"weights_sha256": target["weights_sha256"], "tokenizer_sha256": target["tokenizer_sha256"]},
            "dtype": dtype, "stored": np.dtype(STORED_DTYPE).name, "shape": [int(x) for x in shape]}


def commitment_of(header: Mapping[str, Any], q: np.ndarray, nxt: np.ndarray) -> str:
    """The sealed commitment (64 hex characters): sha256 over ``header`` (``committed_header``, canonical JSON: sorted
    keys, no spaces), then the stored sealed log-probabilities ``q`` (float16, little-endian, C order, ``(n, vocab)``)
    and the realized next-token ids (int64, little-endian, ``(n,)``)."""
    h = hashlib.sha256(json.dumps(dict(header), sort_keys=True, separators=(",", ":")).encode())
    for a in range(0, len(q), 256):
        h.update(np.ascontiguousarray(q[a : a + 256], dtype="<f2").tobytes())
    h.update(np.ascontiguousarray(nxt, dtype="<i8").tobytes())
    return h.hexdigest()


def _fix(name: str) -> str:
    return f"run `logitpred truth --suite {name} --rebuild`"


def record_format(folder: Path) -> str | None:
    """The ``format`` field of ``folder/truth.json`` (None when there is no readable record): lets a caller recompute
    truth of an older storage format instead of failing on it."""
    try:
        rec = read_json(Path(folder) / RECORD)
    except (OSError, ValueError):
        return None
    return rec.get("format") if isinstance(rec, dict) else None


def read_format(path: Path, fmt: str, *, what: str, fix: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` when its ``format`` field is ``fmt``; None when there is no file. Raises
    ``SuiteError`` ("<what> <path> is unreadable / has format X, not fmt: <fix>") otherwise. Shared by the records of
    truth and of trajectories."""
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
    except (OSError, ValueError) as e:
        raise SuiteError(f"{what} {path} is unreadable ({e}): {fix}") from e
    if not isinstance(rec, dict) or rec.get("format") != fmt:
        got = rec.get("format") if isinstance(rec, dict) else type(rec).__name__
        raise SuiteError(f"{what} {path} has format {got!r}, not {fmt}: {fix}")
    return rec


def read_record(folder: Path, *, name: str, version: str, target_id: str) -> dict[str, Any] | None:
    """The truth record ``folder/truth.json`` of suite ``name``, or None when truth was never computed there.

    Raises ``SuiteError`` (advising ``logitpred truth --suite NAME --rebuild``) when the record is unreadable, of
    another format (truth of format 2 stored float32 arrays: rebuild it), for another suite version or target, or
    lacks a file entry, the placement, the committed header or the commitment.
    """
    path = Path(folder) / RECORD
    rec = read_format(path, TRUTH_FORMAT, what="truth record", fix=_fix(name))
    if rec is None:
        return None
    if rec.get("version") != version or (rec.get("target") or {}).get("id") != target_id:
        raise SuiteError(f"truth record {path} belongs to suite version {rec.get('version')!r} and target "
                         f"{(rec.get('target') or {}).get('id')!r}, not {version!r} and {target_id!r}: {_fix(name)}")
    files = rec.get("files")
    ok = isinstance(files, dict) and all(isinstance(files.get(s), dict) and isinstance(files[s].get("file"), str)
                                         and isinstance(files[s].get("sha256"), str) for s in SPLITS)
    if (not ok or not isinstance(rec.get("commitment"), str) or len(rec["commitment"]) != 64
            or not isinstance(rec.get("committed"), dict) or not isinstance(rec.get("placement"), dict)):
        raise SuiteError(f"truth record {path} lacks its file entries or the commitment: {_fix(name)}")
    return rec


def check_finite(logp: np.ndarray, split: str, prompt_ids: Sequence[str], name: str, *, fix: str | None = None) -> None:
    """Raise ``SuiteError`` naming the split, row, prompt id and token if ``logp`` (shape ``(n, vocab)``) holds NaN or
    +inf. ``-inf`` is a legitimate log-probability (a token the target masks out) and passes."""
    bad = np.isnan(logp) | np.isposinf(logp)
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(logp[row, col]) else "+inf"
        pid = prompt_ids[row] if row < len(prompt_ids) else "?"
        raise SuiteError(f"truth of suite {name!r} ({split}) row {row} (prompt {pid}) holds {what} at token id {col}: "
                         f"log-probabilities must be finite or -inf; {fix or _fix(name)}")


def mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only ``np.memmap`` arrays (nothing read until used).

    The safetensors Python API copies tensors into memory; the format is simple enough to map directly: an 8-byte
    little-endian header length, a JSON header giving each tensor's dtype, shape and byte range, then the data
    (https://github.com/huggingface/safetensors#format). Raises ``ValueError`` for a malformed header or a dtype other
    than F16, F32, F64, I64 (F64: the per-continuation sums of ``tasks.trajectory``)."""
    dtypes = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I64": "<i8"}
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = loads_json(f.read(size))
    out = {}
    for key, t in header.items():
        if key == "__metadata__":
            continue
        if t.get("dtype") not in dtypes:
            raise ValueError(f"{path}: tensor {key!r} has dtype {t.get('dtype')!r}, not one of {', '.join(dtypes)}")
        begin, _ = t["data_offsets"]
        shape = tuple(int(x) for x in t["shape"])
        out[key] = (np.memmap(path, dtype=dtypes[t["dtype"]], mode="r", offset=8 + size + begin, shape=shape)
                    if all(shape) else np.empty(shape, dtype=dtypes[t["dtype"]]))
    return out


def load_stored(folder: Path, record: Mapping[str, Any], split: str, n: int, name: str) -> dict[str, np.ndarray]:
    """The stored arrays of one split, memory-mapped after their file matched its recorded sha256: ``logp_f16``
    (float16 ``(n, vocab)``), ``logz`` (float32 ``(n,)``), ``next_token_id`` (int64 ``(n,)``). Raises ``SuiteError``
    naming what is wrong (missing, edited, wrong shapes) and the command that fixes it."""
    entry = record["files"][split]
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise SuiteError(f"truth file {path} named by {Path(folder) / RECORD} is missing: {_fix(name)}")
    if sha256_file(path) != entry["sha256"]:
        raise SuiteError(f"truth file {path} does not match its recorded hash (corrupted or edited): {_fix(name)}")
    try:
        arrays = mmap_safetensors(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SuiteError(f"truth file {path} is unreadable ({e}): {_fix(name)}") from e
    q, logz, nxt = (arrays.get(k) for k in ("logp_f16", "logz", "next_token_id"))
    if q is None or logz is None or nxt is None or q.ndim != 2 or q.shape[0] != n or logz.shape != (n,) \
            or nxt.shape != (n,):
        raise SuiteError(f"truth file {path} does not hold log-probabilities for the {n} {split} prompts of suite "
                         f"{name!r}: {_fix(name)}")
    return {"logp_f16": q, "logz": logz, "next_token_id": nxt}


def load_split(folder: Path, record: Mapping[str, Any], split: str, prompt_ids: Sequence[str],
               name: str) -> tuple[np.ndarray, np.ndarray]:
    """(log-probs float32 ``(n, vocab)``, realized next-token ids int64 ``(n,)``) of one split, ``n = len(prompt_ids)``:
    the stored distribution ``q - logz`` (``tasks.quantize``), read from the memory-mapped file chunk by chunk.

    Checked before returning: the file named by ``record`` exists and matches its sha256, the shapes fit the prompts,
    and no log-probability is NaN or +inf. Raises ``SuiteError`` naming what is wrong and the command that fixes it.
    """
    arrays = load_stored(folder, record, split, len(prompt_ids), name)
    logp = dequantize(arrays["logp_f16"], arrays["logz"])
    check_finite(logp, split, prompt_ids, name)
    return logp, np.array(arrays["next_token_id"])


def write_truth(folder: Path, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], base: Mapping[str, Any],
                sealed_prompts: bytes, prompt_ids: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Store both splits' truth in ``folder`` with one commit point; return the new record.

    ``arrays[split] = (log-probs float32 (n, vocab), realized ids (n,))``, exact; ``base`` holds suite, version,
    target (identity dict) and ``placement`` (``{"device", "dtype"}`` the target ran with); ``sealed_prompts`` are the
    bytes of the suite's ``sealed.jsonl``. Each split is stored as float16 log-probabilities with per-row log-mass
    (``tasks.quantize``) in a safetensors file named by its content hash, written atomically; then ``truth.json``
    (format, files with sha256, storage error, ``sealed_prompts_sha256``, the committed header and the commitment) is
    replaced atomically: the commit point. Files no longer named are deleted only after it. An ``fcntl`` lock on
    ``folder/.lock`` keeps two writers from deleting each other's files. Raises ``SuiteError`` (nothing written) if the
    target produced NaN or +inf, or the storage error's mean exceeds ``MAX_STORAGE_KL``.
    """
    from safetensors.numpy import save

    name = base["suite"]
    stored, storage = {}, {}
    for split in SPLITS:
        logp, nxt = arrays[split]
        check_finite(logp, split, prompt_ids[split], name,
                     fix="the target model produced it (broken or corrupted weights?); nothing was written")
        q, logz = quantize(logp)
        err = storage_error(logp, q, logz)
        if len(err) and err.mean() > MAX_STORAGE_KL:
            raise SuiteError(f"truth of suite {name!r} ({split}) loses {err.mean():.3g} nats (mean KL) in float16 "
                             f"storage, more than the bound {MAX_STORAGE_KL:g}; nothing was written")
        stored[split] = (q, logz, np.ascontiguousarray(nxt, dtype=np.int64))
        storage[split] = {"kl_mean": float(err.mean()) if len(err) else 0.0,
                          "kl_max": float(err.max()) if len(err) else 0.0}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        files = {}
        for split in SPLITS:
            q, logz, nxt = stored[split]
            data = save({"logp_f16": q, "logz": logz, "next_token_id": nxt})
            sha = hashlib.sha256(data).hexdigest()
            path = folder / f"{split}-{sha[:16]}.safetensors"
            if not (path.is_file() and sha256_file(path) == sha):
                atomic_write_bytes(path, data)
            files[split] = {"file": path.name, "sha256": sha}
            crash_point(f"truth:after-{split}")
        prompts_sha = hashlib.sha256(sealed_prompts).hexdigest()
        header = committed_header(sealed_prompts_sha256=prompts_sha, target=base["target"],
                                  dtype=base["placement"]["dtype"], shape=stored["sealed"][0].shape)
        record = {"format": TRUTH_FORMAT, **base, "files": files,
                  "storage": {"dtype": np.dtype(STORED_DTYPE).name, "bytes_per_entry": BYTES_PER_ENTRY,
                              "kl_exact_vs_stored": storage},
                  "sealed_prompts_sha256": prompts_sha, "committed": header,
                  "commitment": commitment_of(header, stored["sealed"][0], stored["sealed"][2])}
        crash_point("truth:before-record")
        atomic_write_json(folder / RECORD, record)  # the commit point
        crash_point("truth:after-record")
        keep = {RECORD, ".lock", *(f["file"] for f in files.values())}
        for p in folder.iterdir():
            if p.name not in keep and (p.suffix == ".safetensors" or p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)  # superseded arrays, temporaries of killed writers
    return record
