r"""The identity of a sealed submission: the digest the holdout ledger (``evals.holdout.record``) compares to recognise
an identical re-submission, which reveals nothing new and so is not counted again.

Next-token predictions (format 2, written ``"v2:" + 64 hex``): each accepted row has its own sha256 of its prompt id
and the row as validation keeps it (``predictors.rows.PredictionRows``), then one sha256 covers them all:

    whole row   = sha256(json.dumps(prompt_id) + "\nwhole\n" + the float64 distribution, little-endian)
    named row   = sha256(json.dumps(prompt_id) + "\nnamed\n" + <V, rest, rule, n> + ids (<i8, sorted) + probabilities
                         (<f8) + for the "unigram" rule sha256(background <f8))
    digest      = sha256("logitpred/predictions/2\n" + json.dumps(accepted ids, suite order) + "\n"
                         + the 32-byte row digests in suite order)

A whole row is the float64 row ``check`` computes (a float32 vector kept as given reads back as it, bit for bit);
hashing it costs O(V), about 0.2 ms at 49,152 tokens on one core. A named-token row (``top`` + rest, a mostly-zero
vector) is hashed by what determines its distribution (``expand`` of it), in O(named tokens): never expanded.

So the digest is a function of the submission's content only: the same predictions give the same digest whatever the
line order of a file, the chunking of a stream or the entry point (``logitpred score`` streaming a file and keeping 32
bytes a row; ``run``, the gate, step-wise rounds and Python's ``score`` hashing rows held in memory, all through this
module). Rejected lines are not part of it; the missing prompts are implied by the accepted ids. Two submissions with
the same digest have the same distributions; the converse does not hold across forms (one distribution given once as
a full vector and once as named tokens gives two digests): such a pair is counted twice, never a new one missed.

Whole-continuation answers of trajectory suites (``answers_digest``, also format 2) hash their sorted
``[prompt_id, continuation_id, logprob]`` triples, so their order does not matter either.

Format 1 (bare hex, in ledger lines written before format 2) was one sha256 over the ids and every row in suite order,
which a stream in file order cannot compute; it never equals a format-2 digest. Consequence: an identical
re-submission of predictions first scored under format 1 is counted once more (the conservative direction: a count
never goes down, a repeat is at worst counted).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FORMAT = 2
PREFIX = "v2:"  # every digest of this format starts with it; older (format 1) digests are bare hex
_ROWS_TAG = b"logitpred/predictions/2\n"
_ANSWERS_TAG = b"logitpred/answers/2\n"
ROW_BYTES = 32  # one sha256 per accepted row
_LOCAL = threading.local()  # per worker thread: the buffer a float32 whole row is normalized into


def whole_digest(prompt_id: str, row: np.ndarray) -> bytes:
    """The 32-byte sha256 of a whole accepted row: ``json.dumps(prompt_id)``, ``"\\nwhole\\n"``, then the ``(V,)``
    row as little-endian float64 bytes (copied only if it is not already contiguous ``<f8``)."""
    h = hashlib.sha256(json.dumps(prompt_id).encode() + b"\nwhole\n")
    h.update(np.ascontiguousarray(row, dtype="<f8"))
    return h.digest()


def named_digest(prompt_id: str, row: Any, vocab_size: int, background_sha256: bytes) -> bytes:
    """The 32-byte sha256 of a named-token row (``predictors.format.Row``: ``ids`` sorted, ``ps``, ``rest``,
    ``unigram``): the prompt id, the vocabulary size, rest, rule and count, the ids (<i8) and probabilities (<f8), and
    for the unigram rule ``background_sha256`` (the 32-byte sha256 of the background, which spreads the rest)."""
    h = hashlib.sha256(json.dumps(prompt_id).encode() + b"\nnamed\n")
    h.update(struct.pack("<qd?q", vocab_size, row.rest, row.unigram, row.ids.size))
    h.update(np.ascontiguousarray(row.ids, dtype="<i8"))
    h.update(np.ascontiguousarray(row.ps, dtype="<f8"))
    if row.unigram:
        h.update(background_sha256)
    return h.digest()


def background_sha256(background: np.ndarray | None) -> bytes:
    """32 bytes: sha256 of the background unigram as little-endian float64 (of ``b"none"`` without one)."""
    if background is None:
        return hashlib.sha256(b"none").digest()
    return hashlib.sha256(np.ascontiguousarray(background, dtype="<f8")).digest()


class SubmissionDigest:
    """The digest of next-token predictions built row by row, in any order (module doc).

    ``prompt_ids``: the split's prompt ids; rows are added by their position in it. Memory: 32 bytes per prompt."""

    def __init__(self, prompt_ids: Sequence[str]) -> None:
        self.prompt_ids = list(prompt_ids)
        self._rows = np.zeros((len(self.prompt_ids), ROW_BYTES), dtype=np.uint8)
        self._seen = np.zeros(len(self.prompt_ids), dtype=bool)

    def add(self, positions: np.ndarray, probs: np.ndarray) -> None:
        """Hash ``probs`` (``(r, V)`` float64, each a whole validated row) as the rows of the prompts at ``positions``
        (``(r,)`` ints into ``prompt_ids``), on the chunk workers (``tasks.truth_stats.run_chunks``; ``hashlib``
        releases the GIL). Raises ``ValueError`` for a position hashed twice or lengths that disagree."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != len(probs):
            raise ValueError(f"{len(positions)} positions for {len(probs)} rows")
        self._store(positions, lambda j: whole_digest(self.prompt_ids[positions[j]], probs[j]))

    def add_rows(self, positions: np.ndarray, rows: Any) -> None:
        """Hash the rows of a ``predictors.rows.PredictionRows`` (row ``j`` is the prompt at ``positions[j]``): whole
        rows as their float64 distribution (a float32 one normalized into a buffer per worker), named-token rows as
        given (``named_digest``, with the sha256 of ``rows.background``). Raises as ``add``."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != len(rows):
            raise ValueError(f"{len(positions)} positions for {len(rows)} rows")
        bg = background_sha256(rows.background) if (rows.unigram & ~rows.is_full).any() else b""
        ids = self.prompt_ids

        def one(j: int) -> bytes:
            fi = int(rows.full_index[j])
            if fi < 0:
                return named_digest(ids[positions[j]], rows.row(j), rows.vocab_size, bg)
            return whole_digest(ids[positions[j]], whole_row(rows.full, fi, rows.vocab_size))

        self._store(positions, one)

    def _store(self, positions: np.ndarray, digest_of: Any) -> None:
        from tasks.truth_stats import run_chunks

        if len(np.unique(positions)) != len(positions) or self._seen[positions].any():
            raise ValueError("a prompt's row was hashed twice")

        def chunk(a: int, b: int) -> list[bytes]:
            return [digest_of(j) for j in range(a, b)]

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


def whole_row(full: Any, i: int, vocab_size: int) -> np.ndarray:
    """Whole row ``i`` of ``PredictionRows.full`` as float64: a view of an array or float64 block, else (a float32
    block, ``RowBlocks``) ``q / q.sum()`` written into a ``(V,)`` buffer kept per thread."""
    if isinstance(full, np.ndarray):
        return full[i]
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or len(buf) != vocab_size:
        buf = _LOCAL.buf = np.empty(vocab_size)
    return full.into(i, buf)


def predictions_digest(prompt_ids: Sequence[str], rows: Any) -> str:
    """The digest (module doc) of validated predictions held in memory: ``prompt_ids`` accepted in suite order and
    their ``PredictionRows`` (same length). The same value a stream of the same predictions computes. Raises
    ``ValueError`` if the lengths differ."""
    d = SubmissionDigest(prompt_ids)
    d.add_rows(np.arange(len(prompt_ids)), rows)
    return d.hexdigest(prompt_ids)


def answers_digest(accepted: Iterable[Any]) -> str:
    """The digest of whole-continuation answers (``TrajectoryPrediction``: ``prompt_id``, ``continuation_id``,
    ``logprob``): ``"v2:" + sha256(tag + json.dumps(sorted [prompt_id, continuation_id, logprob] triples))``, so
    independent of their order. ``logprob`` is written as Python's shortest round-trip float."""
    triples = sorted([a.prompt_id, a.continuation_id, float(a.logprob)] for a in accepted)
    return PREFIX + hashlib.sha256(_ANSWERS_TAG + json.dumps(triples).encode()).hexdigest()
