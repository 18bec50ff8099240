"""Validating predictions one at a time: prompt ids (unknown, duplicate), the prediction (``format.check``), and what
is kept of each accepted row.

``Validator`` checks and hands each accepted row to ``keep``; ``KeepAll`` (``jsonl.validate`` / ``validate_file``)
keeps every row, whole vectors in blocks; ``predictors.stream`` keeps whole vectors only until their chunk is scored.
``Hints`` words the refusal of names that are no single token with bounded work per file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.vocab import Vocabulary

from .format import Prediction, PredictionError, Row, check
from .rows import PredictionRows, RowBlocks, ValidatedPredictions

HINT_LIMIT = 20  # distinct unknown names per file that get near-match suggestions


class Hints:
    """Words the refusal of names that are no single token, with bounded work and size per file: near-match searches
    (difflib, ~0.1 s each) for the first ``limit`` distinct unknown names only; each ambiguous name listed in full once;
    a name explained before gets a short message naming the line that explains it. Remembers at most ``limit`` names
    plus the vocabulary's ambiguous ones."""

    def __init__(self, vocab: Vocabulary, limit: int = HINT_LIMIT) -> None:
        self.vocab, self.limit = vocab, limit
        self.line: int | None = None  # the line being validated, set by the caller
        self.searched, self._first = 0, {}  # near-match searches made; name -> line of its full explanation

    def __call__(self, name: str) -> str:
        """The refusal of ``name`` (see the class)."""
        ids = self.vocab.ids_named(name)
        key = f"{len(ids) > 1}:{self.vocab.canonical(name)}"
        if key in self._first:
            at = self._first[key]
            where = f"line {at}" if at is not None else "its first refusal"
            if len(ids) > 1:
                return f"{name!r} is ambiguous: it names {len(ids)} tokens (ids and how to name each at {where})"
            return f"{self.vocab.explain_unknown(name, suggest=False)} (as at {where})"
        if len(ids) > 1:  # few per vocabulary (57 in SmolLM2's): each is explained in full once
            self._first[key] = self.line
            return self.vocab.explain_ambiguous(name, ids)
        if self.searched >= self.limit:
            return (f"{self.vocab.explain_unknown(name, suggest=False)} (nearest entries are suggested for the first "
                    f"{self.limit} unknown names of a file only)")
        self.searched += 1
        self._first[key] = self.line
        return self.vocab.explain_unknown(name)


class Validator:
    """Checks prompt ids (unknown, duplicate) and validates predictions one at a time; each accepted row goes to
    ``keep`` with its suite position, each rejection to ``errors`` (``"line N: why"``).

    A full vector is checked straight into ``slot(pred)`` when that gives a float64 row of the vocabulary's size
    (``check(..., out=slot)``: no temporary); here the sparse rows are kept (``rows``, ``positions``), and whole
    rows are the subclass's to keep."""

    def __init__(self, prompt_ids: Sequence[str], vocab: Vocabulary, background: np.ndarray | None,
                 errors: list[str]) -> None:
        self.prompt_ids, self.vocab, self.background, self.errors = list(prompt_ids), vocab, background, errors
        self.index = {pid: i for i, pid in enumerate(self.prompt_ids)}
        self.hints = Hints(vocab)
        self.rows: list[Row] = []  # accepted rows, arrival order (whole ones as the subclass marks them)
        self.positions: list[int] = []  # the suite position of each row in ``rows``
        self.taken = np.zeros(len(self.prompt_ids), dtype=bool)  # suite positions with an accepted row
        self.accepted = 0  # accepted rows, whole ones included

    def add(self, line: int | None, pred: Prediction) -> None:
        """Validate one prediction (``line``: its line number, for messages)."""
        at = f"line {line}: " if line is not None else ""
        position = self.index.get(pred.prompt_id)
        if position is None:
            self.errors.append(f"{at}unknown prompt_id {pred.prompt_id!r}: not in this suite split")
            return
        if position < 0:
            self.errors.append(f"{at}duplicate prompt_id {pred.prompt_id!r}: only the first prediction is kept")
            return
        self.index[pred.prompt_id] = -1  # seen
        self.hints.line = line
        try:
            row = check(pred, self.vocab, self.background, explain=self.hints, out=self.slot(pred))
        except PredictionError as e:
            self.errors.append(f"{at}{e}")
            return
        self.accepted += 1
        self.taken[position] = True
        if row.full is None:
            self.rows.append(row)
            self.positions.append(position)
        else:
            self.keep_whole(row, pred, position)

    def slot(self, pred: Prediction) -> np.ndarray | None:
        """Where a full vector is checked: a float64 row of the vocabulary's size, or None for a new array."""
        return None

    def keep_whole(self, row: Row, pred: Prediction, position: int) -> None:
        """Keep an accepted whole row (``row.full``: float64, possibly the ``slot`` it was checked in)."""
        raise NotImplementedError

    def missing(self) -> list[str]:
        """Suite prompts without an accepted prediction so far, in suite order."""
        return [self.prompt_ids[i] for i in np.flatnonzero(~self.taken)]


class _Blocks:
    """Whole rows of one dtype in blocks appended in arrival order, each new block a quarter of the capacity so far (at
    least 8 rows, at most the prompts that may still get a row): the peak stays within 1.25x the rows (plus 8) and no
    row is ever copied again (a single growing buffer copies itself on every realloc)."""

    def __init__(self, vocab_size: int, dtype: type) -> None:
        self.vocab_size, self.dtype = vocab_size, dtype
        self.blocks: list[np.ndarray] = []
        self.capacity = self.used = 0  # rows in all blocks; rows used in the last block

    def slot(self, left: int) -> np.ndarray:
        """The next free row (``left``: prompts that may still get a row); ``commit`` keeps what was written there."""
        if not self.blocks or self.used == len(self.blocks[-1]):
            size = max(1, min(left, max(8, self.capacity // 4)))
            self.blocks.append(np.empty((size, self.vocab_size), dtype=self.dtype))
            self.capacity, self.used = self.capacity + size, 0
        return self.blocks[-1][self.used]

    def commit(self) -> tuple[int, int]:
        """Keeps the row written into ``slot``; returns its (block, offset)."""
        self.used += 1
        return len(self.blocks) - 1, self.used - 1


class KeepAll(Validator):
    """A validator keeping every accepted row (``result``: ``ValidatedPredictions`` in suite order).

    A ``top`` prediction (or a mostly-zero full vector) is kept as its named tokens and rest (``check``): 16 bytes per
    named token, never a vocabulary-sized vector. A whole vector given as float32 without zeros (``probs_b64``) is kept
    as given, 4 bytes per entry, and divided by its sum when read (``rows.RowBlocks``): validation checks it in a
    reused float64 buffer and writes half the bytes to new memory. Any other whole vector is kept as its float64
    distribution. Both kinds go into blocks (``_Blocks``) in arrival order.
    """

    def __init__(self, prompt_ids: Sequence[str], vocab: Vocabulary, background: np.ndarray | None,
                 errors: list[str]) -> None:
        super().__init__(prompt_ids, vocab, background, errors)
        V = len(vocab)
        self.given, self.dists = _Blocks(V, np.float32), _Blocks(V, np.float64)  # whole rows as given / as float64
        self.scratch = np.empty(V)  # where a float32 vector is checked
        self.where: list[tuple[_Blocks, int, int]] = []  # (blocks, block, offset) of each whole row, arrival order

    def _as_given(self, probs: Any) -> bool:
        return isinstance(probs, np.ndarray) and probs.dtype == np.float32 and probs.shape == (len(self.vocab),)

    def _left(self) -> int:
        return len(self.prompt_ids) - self.accepted

    def slot(self, pred: Prediction) -> np.ndarray | None:
        if self._as_given(pred.probs):
            return self.scratch
        if pred.probs is not None:  # a full vector may be kept whole: validate it straight into the next block slot
            return self.dists.slot(self._left())
        return None

    def keep_whole(self, row: Row, pred: Prediction, position: int) -> None:
        probs, left = pred.probs, self._left() + 1  # + 1: this row is counted as accepted already
        if self._as_given(probs) and probs.min() > 0:  # validated, so no entry is negative or NaN: none is zero
            blocks = self.given
            blocks.slot(left)[:] = probs
        else:
            blocks = self.dists
            target = blocks.slot(left)
            if row.full is not target:
                target[:] = row.full
        self.where.append((blocks, *blocks.commit()))
        self.rows.append(row._replace(full=_WHOLE))
        self.positions.append(position)

    def result(self) -> ValidatedPredictions:
        """Every accepted row in suite order, the rejections and the missing prompts."""
        order = np.argsort(self.positions, kind="stable")  # suite-order row j is arrival row order[j]
        whole_arrival = np.cumsum([r.full is not None for r in self.rows]) - 1  # arrival row -> its whole-row number
        rows = [self.rows[i] for i in order]
        is_whole = np.array([r.full is not None for r in rows], dtype=bool)
        full_index = np.full(len(rows), -1, dtype=np.int64)
        full_index[is_whole] = whole_arrival[order[is_whole]] if len(rows) else []
        if len(self.dists.blocks) == 1 and not self.given.blocks:
            full: Any = self.dists.blocks[0][: len(self.where)]
        else:
            first = {self.given: 0, self.dists: len(self.given.blocks)}  # given blocks first, then the float64 ones
            where = np.array([(first[blocks] + b, o) for blocks, b, o in self.where], dtype=np.int64).reshape(-1, 2)
            full = RowBlocks(self.given.blocks + self.dists.blocks, where)
        stored = PredictionRows.from_rows(rows, len(self.vocab), self.background, full=full, full_index=full_index)
        accepted = [self.prompt_ids[i] for i in sorted(self.positions)]
        return ValidatedPredictions(accepted, errors=self.errors, missing=self.missing(), rows=stored)


_WHOLE = np.zeros(0)  # marks a row kept whole in the validator's blocks
