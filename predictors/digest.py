"""The identity of a sealed submission: the digest the holdout ledger (``evals.holdout.record``) compares to recognise
an identical re-submission, which reveals nothing new and so is not counted again.

Next-token predictions (format 2, written ``"v2:" + 64 hex``): each accepted row has its own sha256 of its prompt id
and its distribution as validated (the float64 row ``predictors.format.expand`` gives, bit for bit, little-endian):

    row digest  = sha256(json.dumps(prompt_id) + "\\n" + row.astype("<f8").tobytes())            # 32 bytes
    digest      = sha256("logitpred/predictions/2\\n" + json.dumps(accepted ids, suite order) + "\\n"
                         + the row digests in suite order)

So it is a function of the submission's content only: the same distributions under the same ids give the same digest
whatever the line order of a file, the chunking of a stream, the form a row was given in (a full vector or named tokens
plus a rest rule that expand to the same row) or the entry point (``logitpred score`` streaming a file, ``run``, the
gate, a step-wise round, ``score``/``load_file`` in Python). A stream keeps 32 bytes per row, not the row, and hashes
rows on the chunk workers (``hashlib`` releases the GIL). Rejected lines are not part of it (as before); the missing
prompts are the suite's prompts less the accepted ids, which are.

Whole-continuation answers of trajectory suites (``answers_digest``, also format 2) hash the sorted
``[prompt_id, continuation_id, logprob]`` triples, so their line order does not matter either.

Format 1 (digests without a prefix, in ledger lines written before format 2) hashed the ids and the rows of a
submission in one sequence, which a stream in file order cannot compute; a ledger line of format 1 is never equal to
one of format 2. Consequence: an identical re-submission of predictions first scored under format 1 is counted once
more (the conservative direction: a count never goes down, a repeat is at worst counted).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FORMAT = 2
PREFIX = "v2:"  # every digest of this format starts with it; older (format 1) digests are bare hex
_ROWS_TAG = b"logitpred/predictions/2\n"
_ANSWERS_TAG = b"logitpred/answers/2\n"
ROW_BYTES = 32  # one sha256 per accepted row
_LOCAL = threading.local()  # per worker thread: the buffer a named-token row is expanded into


def row_digest(prompt_id: str, row: np.ndarray) -> bytes:
    """The 32-byte sha256 of one accepted row: ``json.dumps(prompt_id)``, a newline, then the ``(V,)`` row as
    little-endian float64 bytes (copied only if it is not already contiguous ``<f8``)."""
    h = hashlib.sha256(json.dumps(prompt_id).encode() + b"\n")
    h.update(np.ascontiguousarray(row, dtype="<f8"))
    return h.digest()


class SubmissionDigest:
    """The digest of next-token predictions built row by row, in any order (module doc).

    ``prompt_ids``: the split's prompt ids; rows are added by their position in it. Memory: 32 bytes per prompt."""

    def __init__(self, prompt_ids: Sequence[str]) -> None:
        self.prompt_ids = list(prompt_ids)
        self._rows = np.zeros((len(self.prompt_ids), ROW_BYTES), dtype=np.uint8)
        self._seen = np.zeros(len(self.prompt_ids), dtype=bool)

    def add(self, positions: np.ndarray, probs: np.ndarray) -> None:
        """Hash ``probs`` (``(r, V)`` float64, each row a validated distribution) as the rows of the prompts at
        ``positions`` (``(r,)`` ints into ``prompt_ids``), on the chunk workers (``tasks.truth_stats.run_chunks``).
        Raises ``ValueError`` for a position hashed twice or lengths that disagree."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != len(probs):
            raise ValueError(f"{len(positions)} positions for {len(probs)} rows")
        self._store(positions, lambda j, buf: probs[j])

    def add_rows(self, positions: np.ndarray, rows: Any) -> None:
        """Hash the rows of a ``predictors.rows.PredictionRows`` (row ``j`` is the prompt at ``positions[j]``),
        expanding named-token rows one at a time (``expand``: what ``densify`` gives) into a buffer per worker."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != len(rows):
            raise ValueError(f"{len(positions)} positions for {len(rows)} rows")
        self._store(positions, lambda j, buf: dense_row(rows, j, buf))

    def _store(self, positions: np.ndarray, row_of: Any) -> None:
        from tasks.truth_stats import run_chunks

        if len(np.unique(positions)) != len(positions) or self._seen[positions].any():
            raise ValueError("a prompt's row was hashed twice")
        ids = self.prompt_ids

        def chunk(a: int, b: int) -> list[bytes]:
            return [row_digest(ids[positions[j]], row_of(j, _LOCAL)) for j in range(a, b)]

        got = [d for part in run_chunks(chunk, len(positions), 4) for d in part]
        if got:
            self._rows[positions] = np.frombuffer(b"".join(got), dtype=np.uint8).reshape(-1, ROW_BYTES)
        self._seen[positions] = True

    def hexdigest(self, accepted: Sequence[str]) -> str:
        """``"v2:" + hex``: the digest of the accepted ids (suite order) and their rows. Raises ``ValueError`` if an
        accepted prompt's row was not hashed, or a hashed one is not accepted."""
        where = {p: i for i, p in enumerate(self.prompt_ids)}
        at = np.array([where[p] for p in accepted], dtype=np.int64)
        if not self._seen[at].all() or int(self._seen.sum()) != len(at):
            raise ValueError("the hashed rows are not those of the accepted prompts")
        h = hashlib.sha256(_ROWS_TAG + json.dumps(list(accepted)).encode() + b"\n")
        h.update(np.ascontiguousarray(self._rows[at]))
        return PREFIX + h.hexdigest()


def dense_row(rows: Any, j: int, local: threading.local) -> np.ndarray:
    """Row ``j`` of a ``PredictionRows`` as its full float64 distribution: a float64 whole row as held, a float32 one
    as ``q / q.sum()`` and a named-token row expanded, both into ``local.buf`` (a ``(V,)`` buffer kept per thread)."""
    from .format import expand

    buf = getattr(local, "buf", None)
    if buf is None or len(buf) != rows.vocab_size:
        buf = local.buf = np.empty(rows.vocab_size)
    fi = int(rows.full_index[j])
    if fi < 0:
        return expand(rows.row(j), rows.vocab_size, rows.background, out=buf)
    return rows.full[fi] if isinstance(rows.full, np.ndarray) else rows.full.into(fi, buf)


def predictions_digest(prompt_ids: Sequence[str], rows: Any) -> str:
    """The digest (module doc) of validated predictions held in memory: ``prompt_ids`` accepted in suite order and
    their ``PredictionRows`` (same length). The same value a stream of the same predictions computes."""
    d = SubmissionDigest(prompt_ids)
    d.add_rows(np.arange(len(prompt_ids)), rows)
    return d.hexdigest(prompt_ids)


def answers_digest(accepted: Iterable[Any]) -> str:
    """The digest of whole-continuation answers (``TrajectoryPrediction``: ``prompt_id``, ``continuation_id``,
    ``logprob``): ``"v2:" + sha256(tag + json.dumps(sorted [prompt_id, continuation_id, logprob] triples))``, so
    independent of their order. ``logprob`` is written as Python's shortest round-trip float."""
    triples = sorted([a.prompt_id, a.continuation_id, float(a.logprob)] for a in accepted)
    return PREFIX + hashlib.sha256(_ANSWERS_TAG + json.dumps(triples).encode()).hexdigest()
