"""Validating a predictions file in chunks: whole vectors go through one reused buffer and are handed on a chunk at a
time, so a file's full vectors are never all held (``evals.scoring.score_file`` scores each chunk as it fills).

Why: keeping every whole row (``jsonl.validate_file``) writes each into new memory, and the first touch of fresh
pages (~0.2-0.5 ms a 49,152-entry row on a loaded machine, and varying) cost more than the rest of validation
(parsing, checks: ~0.1 ms) and as much as scoring the row. Rows checked into a reused buffer touch no new memory.
The rows are those ``validate_file`` keeps, bit for bit: the float64 row ``check`` computes (a float32 vector kept as
given reads back as that same row, ``rows.RowBlocks``); rejections and their messages are the same, in line order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.vocab import Vocabulary

from .format import Prediction, Row
from .jsonl import iter_jsonl
from .rows import PredictionRows, ValidatedPredictions
from .validator import Validator

CHUNK_ENTRIES = 1 << 21  # float64 entries of the reused buffer (16 MiB): 42 rows at 49,152 tokens, 8 at 256,000


def chunk_size(vocab_size: int, entries: int = CHUNK_ENTRIES) -> int:
    """Rows of the reused buffer for a vocabulary size: ``entries // vocab_size``, at least one."""
    return max(1, entries // vocab_size)


@dataclass
class Chunk:
    """Whole rows validated since the last chunk, in arrival order.

    ``probs`` is a ``(r, V)`` float64 view of the stream's reused buffer, each row a full, strictly positive
    distribution; it is overwritten once the stream goes on (copy what must outlive that). ``positions`` (``(r,)``
    int64) are the rows' suite positions (indices into the ``prompt_ids`` given), ``lines`` their line numbers."""

    positions: np.ndarray
    lines: np.ndarray
    probs: np.ndarray


@dataclass
class Rest:
    """What remains of a file once its chunks are through: ``prompt_ids`` of every accepted row (whole or not) in
    suite order, ``errors`` (one message per rejected line, in line order), ``missing`` prompts (suite order), and
    ``sparse``: the rows kept as named tokens plus rest (``top`` predictions, mostly-zero vectors) in suite order."""

    prompt_ids: list[str]
    errors: list[str]
    missing: list[str]
    sparse: ValidatedPredictions


class _Chunked(Validator):
    """Whole rows into the next free row of one reused ``(rows, V)`` float64 buffer; sparse rows kept."""

    def __init__(self, prompt_ids: Sequence[str], vocab: Vocabulary, background: np.ndarray | None, rows: int) -> None:
        super().__init__(prompt_ids, vocab, background, [])
        self.buffer = np.empty((rows, len(vocab)))
        self.filled, self.line = 0, 0
        self.at, self.lines = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64)

    def slot(self, pred: Prediction) -> np.ndarray | None:
        return self.buffer[self.filled] if pred.probs is not None else None

    def keep_whole(self, row: Row, pred: Prediction, position: int) -> None:
        target = self.buffer[self.filled]
        if row.full is not target:
            target[:] = row.full
        self.at[self.filled], self.lines[self.filled] = position, self.line
        self.filled += 1

    def take(self) -> Chunk:
        r, self.filled = self.filled, 0
        return Chunk(self.at[:r].copy(), self.lines[:r].copy(), self.buffer[:r])


class FileStream:
    """A predictions file validated as a stream of ``Chunk`` s (iterate once), then ``rest()``.

    Memory: one ``(chunk_size(V), V)`` float64 buffer (16 MiB by default), the sparse rows as given (16 bytes per
    named token) and one line; never the whole rows of the file. Raises nothing for bad lines (they are ``errors``);
    ``FileNotFoundError`` / ``OSError`` if the file cannot be opened."""

    def __init__(self, path: Path, prompt_ids: Sequence[str], vocab: Vocabulary, background: np.ndarray | None = None,
                 *, rows: int | None = None) -> None:
        self.path = Path(path)
        self._check = _Chunked(prompt_ids, vocab, background, rows or chunk_size(len(vocab)))
        self._done = False

    @property
    def prompt_ids(self) -> list[str]:
        """The suite's prompt ids; a chunk's ``positions`` index this list."""
        return self._check.prompt_ids

    @property
    def errors(self) -> list[str]:
        """The rejections so far (all of them once the chunks are through)."""
        return self._check.errors

    @property
    def buffer(self) -> np.ndarray:
        """The reused ``(rows, V)`` float64 buffer every chunk's ``probs`` is a view of."""
        return self._check.buffer

    def __iter__(self) -> Iterator[Chunk]:
        if self._done:
            raise RuntimeError(f"{self.path} was streamed already")
        check = self._check
        for n, item in iter_jsonl(self.path):
            if isinstance(item, str):
                check.errors.append(f"line {n}: {item}")
                continue
            check.line = n
            check.add(n, item)
            if check.filled == len(check.buffer):
                yield check.take()
        if check.filled:
            yield check.take()
        self._done = True

    def rest(self) -> Rest:
        """Accepted ids, rejections, missing prompts and the sparse rows; only after the chunks were all taken."""
        if not self._done:
            raise RuntimeError("rest() comes after the last chunk: iterate over the stream first")
        check = self._check
        order = np.argsort(check.positions, kind="stable")
        rows = PredictionRows.from_rows([check.rows[i] for i in order], len(check.vocab), check.background)
        sparse_ids = [check.prompt_ids[check.positions[i]] for i in order]
        accepted = [check.prompt_ids[i] for i in np.flatnonzero(check.taken)]
        return Rest(accepted, check.errors, check.missing(), ValidatedPredictions(sparse_ids, rows=rows))
