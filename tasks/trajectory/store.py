"""Storing continuation sets and their truth: content-hashed files, one record written last, the trajectory commitment.

Folder: ``<data_dir>/trajectories/<suite>/<version>-<target id>-<settings hash>/`` (``trajectory_dir``; the settings
hash is ``TrajectorySpec.settings_hash``: sampler, seed, temperature, K, M, EOS ids). Per split:

- ``<split>-continuations-<sha16>.jsonl``: one ``Continuation`` per line (``id``, ``prompt_id``, ``kind``,
  ``token_ids``, ``text``, ``behaviour``), prompts in suite order, per prompt realized, sampled, given;
- ``<split>-truth-<sha16>.safetensors``: the chain-rule truth of those continuations, in the same order, ragged:
  ``token_ids`` int64 ``(S,)`` (all continuations' tokens, concatenated; S steps in all), ``offsets`` int64 ``(n+1,)``
  (continuation i is ``[offsets[i], offsets[i+1])``), ``step_logprobs`` float32 ``(S,)`` (natural log, exact float32
  from the model: ``log p(y_t | bos, x, y_<t)``), ``logprob`` float64 ``(n,)`` (their sums, summed in float64),
  ``full_offsets`` int64 ``(n+1,)`` (rows of the full distributions; only ``sampled`` continuations have them, one
  row per step), ``full_f16`` float16 ``(R, vocab)`` and ``full_logz`` float32 ``(R,)``: every step's full
  next-token distribution stored as ``tasks.quantize`` stores next-token truth (``full_f16 - full_logz``); its
  storage KL is measured at write time, recorded, and bounded by ``MAX_STORAGE_KL`` (mean).

``trajectories.json`` is written last, atomically, under an ``fcntl`` lock on ``.lock``: the single commit point
(files it no longer names are deleted after it). It holds the files with their sha256, the placement, the full
sampling settings (with library versions), counts, given pairs left out, the storage error, the committed header and
``trajectory_commitment``.

The trajectory commitment (``commitment_of``): sha256 over the committed header (format, the suite's next-token sealed
``commitment`` it extends, the sealed prompts' sha256, target weights' and tokenizer's sha256, dtype, stored dtype,
sampling key, behaviour file sha256, the sealed continuation file's sha256, the arrays' shapes; canonical JSON), then
the sealed truth arrays in a fixed order (little-endian, C order): ``token_ids``, ``offsets``, ``step_logprobs``,
``logprob``, ``full_offsets``, ``full_f16``, ``full_logz``. One published value so covers prompts, target, next-token
truth, the sealed continuations and all their truth. ``verify_trajectories`` re-hashes it from disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write, loads_json
from ..paths import data_dir, sha256_file
from ..quantize import STORED_DTYPE
from ..truth import SPLITS, SuiteError, mmap_safetensors, read_format
from .sets import Continuation
from .spec import require

TRAJ_FORMAT = "logitpred-trajectories/1"
RECORD = "trajectories.json"
# Tensor order in the file and in the commitment's hash (file order: widest dtype first, so every tensor is aligned).
FILE_ORDER = (("logprob", "F64"), ("token_ids", "I64"), ("offsets", "I64"), ("full_offsets", "I64"),
              ("step_logprobs", "F32"), ("full_logz", "F32"), ("full_f16", "F16"))
HASH_ORDER = ("token_ids", "offsets", "step_logprobs", "logprob", "full_offsets", "full_f16", "full_logz")
NUMPY = {"F64": "<f8", "I64": "<i8", "F32": "<f4", "F16": "<f2"}
CODES = dict(FILE_ORDER)
BLOCK = 1 << 22  # bytes per streamed block


def trajectory_dir(suite: Any) -> Path:
    """``<data_dir>/trajectories/<name>/<version>-<target id>-<settings hash>``. Raises ``SuiteError`` for a
    next-token suite."""
    sp = require(suite)
    return data_dir() / "trajectories" / suite.name / f"{suite.version}-{suite.target['id']}-{sp.settings_hash()}"


def _fix(name: str) -> str:
    return f"rebuild the trajectories (`logitpred truth --suite {name} --rebuild`)"


# --- writing --------------------------------------------------------------------------------------------------------
def _header_bytes(shapes: Mapping[str, tuple[int, ...]]) -> bytes:
    """The safetensors header (8-byte little-endian length, JSON padded with spaces to a multiple of 8)."""
    meta, at = {}, 0
    for name, code in FILE_ORDER:
        size = int(np.prod(shapes[name], dtype=np.int64)) * np.dtype(NUMPY[code]).itemsize
        meta[name] = {"dtype": code, "shape": [int(x) for x in shapes[name]], "data_offsets": [at, at + size]}
        at += size
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _blocks(small: Mapping[str, np.ndarray], full_path: Path, shapes: Mapping[str, tuple[int, ...]]) -> Iterator[bytes]:
    yield _header_bytes(shapes)
    for name, code in FILE_ORDER:
        if name != "full_f16":
            yield np.ascontiguousarray(small[name], dtype=NUMPY[code]).tobytes()
            continue
        with open(full_path, "rb") as f:
            while block := f.read(BLOCK):
                yield block


def write_arrays(folder: Path, prefix: str, small: Mapping[str, np.ndarray], full_path: Path,
                 vocab: int) -> dict[str, str]:
    """Write one split's truth file ``<prefix>-<sha16>.safetensors`` in ``folder`` (atomically; kept as is when a file
    of that content exists): ``small`` holds every array of ``FILE_ORDER`` but ``full_f16``, whose float16 rows
    (``(R, vocab)``, R = ``len(small["full_logz"])``) are streamed from the raw file ``full_path``. Returns
    ``{"file", "sha256"}``. Raises ``SuiteError`` if ``full_path`` does not hold R rows."""
    rows = len(small["full_logz"])
    if full_path.stat().st_size != rows * vocab * 2:
        raise SuiteError(f"internal error: {full_path} holds {full_path.stat().st_size} bytes, not {rows} float16 "
                         f"rows of {vocab}")
    shapes = {**{k: tuple(np.shape(v)) for k, v in small.items()}, "full_f16": (rows, vocab)}
    h = hashlib.sha256()
    for b in _blocks(small, full_path, shapes):
        h.update(b)
    sha = h.hexdigest()
    path = folder / f"{prefix}-{sha[:16]}.safetensors"
    if not (path.is_file() and sha256_file(path) == sha):
        def write(f: Any) -> None:
            for b in _blocks(small, full_path, shapes):
                f.write(b)

        atomic_write(path, write)
    return {"file": path.name, "sha256": sha}


def write_continuations(folder: Path, split: str, conts: list[Continuation]) -> dict[str, str]:
    """Write ``<split>-continuations-<sha16>.jsonl`` atomically; returns ``{"file", "sha256"}``."""
    data = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in conts).encode()
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"{split}-continuations-{sha[:16]}.jsonl"
    if not (path.is_file() and sha256_file(path) == sha):
        atomic_write(path, lambda f: f.write(data))
    return {"file": path.name, "sha256": sha}


# --- the commitment -------------------------------------------------------------------------------------------------
def committed_header(*, truth_commitment: str, sealed_prompts_sha256: str, target: Mapping[str, Any], dtype: str,
                     sampling: Mapping[str, Any], behaviours_sha256: str | None, continuations_sha256: str,
                     shapes: Mapping[str, Any]) -> dict[str, Any]:
    """What the trajectory commitment binds besides the sealed truth arrays (module doc)."""
    return {"format": TRAJ_FORMAT, "truth_commitment": truth_commitment,
            "sealed_prompts_sha256": sealed_prompts_sha256,
            "target": {"weights_sha256": target["weights_sha256"], "tokenizer_sha256": target["tokenizer_sha256"]},
            "dtype": dtype, "stored": np.dtype(STORED_DTYPE).name, "sampling": dict(sampling),
            "behaviours_sha256": behaviours_sha256, "continuations_sha256": continuations_sha256,
            "shapes": {k: [int(x) for x in v] for k, v in sorted(shapes.items())}}


def commitment_of(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """The trajectory commitment (64 hex characters): sha256 over ``header`` (canonical JSON: sorted keys, no spaces),
    then each array of ``HASH_ORDER`` little-endian in C order (``full_f16`` by blocks of 256 rows)."""
    h = hashlib.sha256(json.dumps(dict(header), sort_keys=True, separators=(",", ":")).encode())
    for name in HASH_ORDER:
        a, dt = arrays[name], NUMPY[CODES[name]]
        for s in range(0, max(len(a), 1), 256):
            h.update(np.ascontiguousarray(a[s : s + 256], dtype=dt).tobytes())
    return h.hexdigest()


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(x) for x in arrays[k].shape) for k in HASH_ORDER}


# --- reading --------------------------------------------------------------------------------------------------------
def read_record(folder: Path, suite: Any) -> dict[str, Any] | None:
    """The record ``folder/trajectories.json`` of ``suite``, or None when never built. Raises ``SuiteError`` when it
    is unreadable, of another format, for another version or target, or lacks its files or commitment."""
    path = Path(folder) / RECORD
    rec = read_format(path, TRAJ_FORMAT, what="trajectory record", fix=_fix(suite.name))
    if rec is None:
        return None
    if rec.get("version") != suite.version or (rec.get("target") or {}).get("id") != suite.target["id"]:
        raise SuiteError(f"trajectory record {path} belongs to another suite version or target: {_fix(suite.name)}")
    files = rec.get("files")
    ok = isinstance(files, dict) and all(
        isinstance(files.get(s), dict) and all(isinstance((files[s].get(k) or {}).get(f), str)
                                               for k in ("continuations", "truth") for f in ("file", "sha256"))
        for s in SPLITS)
    c = rec.get("trajectory_commitment")
    if not ok or not isinstance(c, str) or len(c) != 64 or not isinstance(rec.get("committed"), dict):
        raise SuiteError(f"trajectory record {path} lacks its file entries or the commitment: {_fix(suite.name)}")
    return rec


def _checked(folder: Path, entry: Mapping[str, str], name: str) -> Path:
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise SuiteError(f"trajectory file {path} named by {Path(folder) / RECORD} is missing: {_fix(name)}")
    if sha256_file(path) != entry["sha256"]:
        raise SuiteError(f"trajectory file {path} does not match its recorded hash (corrupted or edited): "
                         f"{_fix(name)}")
    return path


def load_stored(folder: Path, record: Mapping[str, Any], split: str,
                name: str) -> tuple[list[Continuation], dict[str, np.ndarray]]:
    """One split's continuations and truth arrays (memory-mapped; module doc) after both files matched their
    recorded sha256 and the arrays matched the continuations (count, lengths, token ids, full rows exactly for the
    sampled ones). Raises ``SuiteError`` naming what is wrong and the fix."""
    entry = record["files"][split]
    cpath = _checked(folder, entry["continuations"], name)
    tpath = _checked(folder, entry["truth"], name)
    try:
        conts = [Continuation.from_dict(loads_json(line)) for line in cpath.read_text("utf-8").splitlines()
                 if line.strip()]
        arrays = mmap_safetensors(tpath)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SuiteError(f"trajectory files of {split} are unreadable ({e}): {_fix(name)}") from e
    if set(arrays) != set(CODES):
        raise SuiteError(f"trajectory file {tpath} holds {sorted(arrays)}, not {sorted(CODES)}: {_fix(name)}")
    n = len(conts)
    lengths = np.array([len(c.token_ids) for c in conts], dtype=np.int64)
    full = np.array([len(c.token_ids) if c.kind == "sampled" else 0 for c in conts], dtype=np.int64)
    off, foff = np.array(arrays["offsets"]), np.array(arrays["full_offsets"])
    total, rows = int(lengths.sum()), int(full.sum())
    good = (off.shape == (n + 1,) and foff.shape == (n + 1,) and np.array_equal(np.diff(off), lengths)
            and np.array_equal(np.diff(foff), full) and (n == 0 or (off[0] == 0 and foff[0] == 0))
            and arrays["token_ids"].shape == (total,) and arrays["step_logprobs"].shape == (total,)
            and arrays["logprob"].shape == (n,) and arrays["full_f16"].shape[0] == rows
            and arrays["full_logz"].shape == (rows,)
            and np.array_equal(arrays["token_ids"], [t for c in conts for t in c.token_ids]))
    if not good:
        raise SuiteError(f"trajectory files of {split} ({cpath.name}, {tpath.name}) do not match each other: "
                         f"{_fix(name)}")
    return conts, arrays
