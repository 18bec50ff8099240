"""The target's true next-token distributions at every prompt's cut point, and how they are stored.

One forward pass per prompt group serves all its cuts: prompts of one ``doc`` key are prefixes of one token sequence,
so position ``len(bos) + cut - 1`` of the group's pass gives that prompt's distribution. (Suites give each prompt a
``doc`` key of its own window, so a group is usually one prompt.) Groups are batched (sorted by length, right-padded)
and run through the model's *own* forward with ``logits_to_keep`` set to the cut positions (``tasks.forward``): the
architecture's own output processing (soft-capping, logit scaling, tied or untied heads) is included, and the output
layer runs only at cut positions. Prompts longer than the model's context (BOS included) are refused.

Batch invariance: with right padding and a causal mask, real positions never attend to padding, and log-softmax runs
in float32 over the full vocabulary. ``tests/tasks/test_truth.py`` checks cached truth against one forward pass per
prompt. What remains is float rounding from different matrix shapes (~1e-6 in log-probability).

Storage (``<truth dir>/``): one safetensors file per split, named by its content hash (``practice-<sha16>.safetensors``),
and ``truth.json``, written last and atomically: it names the array files with their sha256 and holds the sealed
commitment. ``truth.json`` is the single commit point: a process killed at any moment leaves the previous record (whose
files are still there: superseded files are deleted only after the new record is in place) or the new one.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_bytes, atomic_write_json, crash_point, read_json
from .paths import sha256_file

TRUTH_FORMAT = "logitpred-truth/2"
RECORD = "truth.json"
SPLITS = ("practice", "sealed")


class SuiteError(ValueError):
    """A suite or its truth is missing, stale or inconsistent; the message names the command that fixes it."""


def commitment_of(sealed_prompts: bytes, logp: np.ndarray, nxt: np.ndarray) -> str:
    """The sealed commitment (64 hex characters): sha256 over the sealed prompts file's bytes, then the sealed
    log-probabilities (float32, C order, shape ``(n, vocab)``) and realized next-token ids (int64, shape ``(n,)``)."""
    h = hashlib.sha256(sealed_prompts)
    h.update(np.ascontiguousarray(logp, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(nxt, dtype=np.int64).tobytes())
    return h.hexdigest()


def _fix(name: str) -> str:
    return f"run `logitpred truth --suite {name} --rebuild`"


def read_record(folder: Path, *, name: str, version: str, target_id: str) -> dict[str, Any] | None:
    """The truth record ``folder/truth.json`` of suite ``name``, or None when truth was never computed there.

    Raises ``SuiteError`` (advising ``logitpred truth --suite NAME --rebuild``) when the record is unreadable, of
    another format, for another suite version or target, or lacks a file entry or the commitment.
    """
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
    except (OSError, ValueError) as e:
        raise SuiteError(f"truth record {path} is unreadable ({e}): {_fix(name)}") from e
    if not isinstance(rec, dict) or rec.get("format") != TRUTH_FORMAT:
        got = rec.get("format") if isinstance(rec, dict) else type(rec).__name__
        raise SuiteError(f"truth record {path} has format {got!r}, not {TRUTH_FORMAT}: {_fix(name)}")
    if rec.get("version") != version or (rec.get("target") or {}).get("id") != target_id:
        raise SuiteError(f"truth record {path} belongs to suite version {rec.get('version')!r} and target "
                         f"{(rec.get('target') or {}).get('id')!r}, not {version!r} and {target_id!r}: {_fix(name)}")
    files = rec.get("files")
    ok = isinstance(files, dict) and all(isinstance(files.get(s), dict) and isinstance(files[s].get("file"), str)
                                         and isinstance(files[s].get("sha256"), str) for s in SPLITS)
    if not ok or not isinstance(rec.get("commitment"), str) or len(rec["commitment"]) != 64:
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


def load_split(folder: Path, record: Mapping[str, Any], split: str, prompt_ids: Sequence[str],
               name: str) -> tuple[np.ndarray, np.ndarray]:
    """(log-probs float32 ``(n, vocab)``, realized next-token ids int64 ``(n,)``) of one split, ``n = len(prompt_ids)``.

    Checked before returning: the file named by ``record`` exists and matches its sha256, the shapes fit the prompts,
    and no log-probability is NaN or +inf. Raises ``SuiteError`` naming what is wrong and the command that fixes it.
    """
    from safetensors.numpy import load_file

    entry = record["files"][split]
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise SuiteError(f"truth file {path} named by {Path(folder) / RECORD} is missing: {_fix(name)}")
    if sha256_file(path) != entry["sha256"]:
        raise SuiteError(f"truth file {path} does not match its recorded hash (corrupted or edited): {_fix(name)}")
    arrays = load_file(path)
    logp, nxt = arrays.get("logp"), arrays.get("next_token_id")
    n = len(prompt_ids)
    if logp is None or nxt is None or logp.ndim != 2 or logp.shape[0] != n or nxt.shape != (n,):
        raise SuiteError(f"truth file {path} does not hold log-probabilities for the {n} {split} prompts of suite "
                         f"{name!r}: {_fix(name)}")
    check_finite(logp, split, prompt_ids, name)
    return logp, nxt


def write_truth(folder: Path, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], base: Mapping[str, Any],
                sealed_prompts: bytes, prompt_ids: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Store both splits' truth in ``folder`` with one commit point; return the new record.

    ``arrays[split] = (log-probs float32 (n, vocab), realized ids (n,))``; ``base`` holds suite, version and target;
    ``sealed_prompts`` are the bytes of the suite's ``sealed.jsonl``. Array files are named by their content hash and
    written atomically, then ``truth.json`` (format, files with sha256, ``sealed_prompts_sha256``, commitment) is
    replaced atomically: the commit point. Files no longer named are deleted only after it. An ``fcntl`` lock on
    ``folder/.lock`` keeps two writers from deleting each other's files. Raises ``SuiteError`` (nothing written) if the
    target produced NaN or +inf.
    """
    from safetensors.numpy import save

    for split in SPLITS:
        check_finite(arrays[split][0], split, prompt_ids[split], base["suite"],
                     fix="the target model produced it (broken or corrupted weights?); nothing was written")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        files = {}
        for split in SPLITS:
            logp, nxt = arrays[split]
            data = save({"logp": np.ascontiguousarray(logp, dtype=np.float32),
                         "next_token_id": np.ascontiguousarray(nxt, dtype=np.int64)})
            sha = hashlib.sha256(data).hexdigest()
            path = folder / f"{split}-{sha[:16]}.safetensors"
            if not (path.is_file() and sha256_file(path) == sha):
                atomic_write_bytes(path, data)
            files[split] = {"file": path.name, "sha256": sha}
            crash_point(f"truth:after-{split}")
        record = {"format": TRUTH_FORMAT, **base, "files": files,
                  "sealed_prompts_sha256": hashlib.sha256(sealed_prompts).hexdigest(),
                  "commitment": commitment_of(sealed_prompts, *arrays["sealed"])}
        crash_point("truth:before-record")
        atomic_write_json(folder / RECORD, record)  # the commit point
        crash_point("truth:after-record")
        keep = {RECORD, ".lock", *(f["file"] for f in files.values())}
        for p in folder.iterdir():
            if p.name not in keep and (p.suffix == ".safetensors" or p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)  # superseded arrays, temporaries of killed writers
    return record
