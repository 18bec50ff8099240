"""Validated predictions in memory: rows as given (named ids, probabilities, rest rule) or whole vectors in blocks.

``PredictionRows`` holds what ``predictors.format.check`` accepted for a split, in the suite's order, without
densifying: a ``top`` prediction costs 16 bytes per named token. ``ValidatedPredictions`` adds the rejected lines and
the missing prompts, and gives the full float64 matrix (``.probs``) on first use, bit for bit as ``densify`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .format import Row, expand


class RowBlocks:
    """Whole rows held in a few blocks, appended without copying (a growing single buffer copies itself on every
    realloc): row j is ``blocks[where[j, 0]][where[j, 1]]``. Indexing with an int gives that row, with an array of
    ints a new ``(len, V)`` float64 array.

    A float64 block holds distributions as they are (an int index gives a view). A float32 block holds full vectors as
    given (``probs_b64``, every entry > 0: half the bytes): its row is ``q / q.sum()`` of ``q``, the float64 copy of
    the given values, which is what ``check`` computes, bit for bit (an int index gives a new array)."""

    def __init__(self, blocks: list[np.ndarray], where: np.ndarray) -> None:
        self.blocks, self.where = blocks, np.asarray(where, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.where)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.where), self.blocks[0].shape[1] if self.blocks else 0

    def _row(self, j: int, out: np.ndarray | None = None) -> np.ndarray:
        b, o = self.where[j]
        given = self.blocks[b][o]
        if given.dtype == np.float64:
            if out is None:
                return given
            out[:] = given
            return out
        return normalized(given, out)

    def into(self, j: int, out: np.ndarray) -> np.ndarray:
        """Row ``j`` as float64: a view of a float64 block, else ``q / q.sum()`` written into ``out`` (``(V,)``)."""
        b, o = self.where[j]
        given = self.blocks[b][o]
        return given if given.dtype == np.float64 else normalized(given, out)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._row(index)
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.shape[1]))
        for j, i in enumerate(index):
            self._row(i, out[j])
        return out


def normalized(given: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``q / q.sum()`` for ``q`` the float64 copy of ``given`` (written into ``out`` when given): the whole row
    ``check`` returns for a full vector without zeros, computed the same way (``predictors.format.check``)."""
    q = np.empty(given.shape) if out is None else out
    np.copyto(q, given)
    return np.divide(q, q.sum(), out=q)


class PredictionRows:
    """Validated predictions of ``n`` prompts, kept as given: named tokens plus a rest rule, or whole vectors.

    Sparse rows are in CSR form: row ``i`` names ``ids[indptr[i]:indptr[i+1]]`` (sorted) with probabilities ``vals``
    (after the min-rest scaling) and spreads ``rest[i]`` over every other token, uniformly or (``unigram[i]``) by the
    background renormalized over the unnamed tokens. A row kept whole is ``full[full_index[i]]`` (``full_index`` is
    -1 for sparse rows). Memory: 16 bytes per named token, 8 per vocabulary entry of a whole row (4 for a float32
    vector kept as given, see ``RowBlocks``).
    """

    def __init__(self, vocab_size: int, indptr: np.ndarray, ids: np.ndarray, vals: np.ndarray, rest: np.ndarray,
                 unigram: np.ndarray, full_index: np.ndarray, full: np.ndarray,
                 background: np.ndarray | None = None) -> None:
        self.vocab_size, self.background = int(vocab_size), background
        self.indptr, self.ids, self.vals = indptr, ids, vals
        self.rest, self.unigram, self.full_index, self.full = rest, unigram, full_index, full

    def __len__(self) -> int:
        return len(self.rest)

    @classmethod
    def from_dense(cls, probs: np.ndarray, background: np.ndarray | None = None) -> PredictionRows:
        """Whole rows only (validated distributions, shape ``(n, V)``)."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"expected (prompts, vocabulary) probabilities, got shape {probs.shape}")
        n = len(probs)
        return cls(probs.shape[1], np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0),
                   np.zeros(n), np.zeros(n, dtype=bool), np.arange(n), probs, background)

    @classmethod
    def from_rows(cls, rows: Sequence[Row], vocab_size: int, background: np.ndarray | None = None,
                  full: np.ndarray | None = None, full_index: Sequence[int] | None = None) -> PredictionRows:
        """Rows from ``check``. Whole rows are stacked, unless ``full`` (their buffer) and ``full_index`` are given."""
        n = len(rows)
        sizes = np.array([0 if r.full is not None else r.ids.size for r in rows], dtype=np.int64)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        sparse = [r for r in rows if r.full is None]
        ids = np.concatenate([r.ids for r in sparse]) if sparse else np.zeros(0, dtype=np.int64)
        vals = np.concatenate([r.ps for r in sparse]) if sparse else np.zeros(0)
        if ids.size:  # sort each row's named tokens by id (one stable sort of row * V + id)
            order = np.argsort(np.repeat(np.arange(n, dtype=np.int64), sizes) * vocab_size + ids, kind="stable")
            ids, vals = ids[order], vals[order]
        rest = np.array([r.rest for r in rows], dtype=np.float64)
        unigram = np.array([r.unigram for r in rows], dtype=bool)
        if full is None:
            whole = [r.full for r in rows if r.full is not None]
            full = np.stack(whole) if whole else np.zeros((0, vocab_size))
            fi = np.full(n, -1, dtype=np.int64)
            fi[[i for i, r in enumerate(rows) if r.full is not None]] = np.arange(len(whole))
        else:
            fi = np.asarray(full_index, dtype=np.int64)
        return cls(vocab_size, indptr, ids.astype(np.int64, copy=False), vals, rest, unigram, fi, full, background)

    @property
    def is_full(self) -> np.ndarray:
        """(n,) bool: rows kept whole."""
        return self.full_index >= 0

    def take(self, index: Sequence[int] | np.ndarray) -> PredictionRows:
        """The rows ``index`` (a subset or a permutation); whole rows are shared, not copied."""
        index = np.asarray(index, dtype=np.int64)
        sizes = np.diff(self.indptr)[index]
        indptr = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        starts = np.repeat(self.indptr[index] - indptr[:-1], sizes) + np.arange(int(indptr[-1]))
        return PredictionRows(self.vocab_size, indptr, self.ids[starts], self.vals[starts], self.rest[index],
                              self.unigram[index], self.full_index[index], self.full, self.background)

    def row(self, i: int) -> Row:
        """Row ``i`` as ``check`` returns it (named tokens sorted by id)."""
        if self.full_index[i] >= 0:
            return Row(None, None, 0.0, False, self.full[self.full_index[i]])
        a, b = self.indptr[i], self.indptr[i + 1]
        return Row(self.ids[a:b], self.vals[a:b], float(self.rest[i]), bool(self.unigram[i]), None)

    def dense(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` as full distributions (float64), bit for bit what ``densify`` gives for each."""
        stop = len(self) if stop is None else stop
        q = np.empty((stop - start, self.vocab_size)) if out is None else out[: stop - start]
        for j, i in enumerate(range(start, stop)):
            expand(self.row(i), self.vocab_size, self.background, out=q[j])
        return q


class ValidatedPredictions:
    """A file's or predictor's predictions after validation: accepted rows in suite order, and what was not.

    ``rows`` keeps every prediction as given (``PredictionRows``: named tokens + rest, or whole vectors); ``probs``
    is the ``(n, vocab)`` float64 matrix of full distributions, built on first use (and kept) for callers that want
    it. Constructed from ``probs`` (``ValidatedPredictions(ids, probs, errors, missing)``) every row is whole.
    """

    def __init__(self, prompt_ids: list[str], probs: np.ndarray | None = None, errors: list[str] | None = None,
                 missing: list[str] | None = None, *, rows: PredictionRows | None = None) -> None:
        if (probs is None) == (rows is None):
            raise ValueError("give the rows either as probs (n, vocab) or as PredictionRows")
        self.prompt_ids = list(prompt_ids)  # in the suite's order, only accepted ones
        self.errors = list(errors or [])  # one readable message per rejected line or prompt
        self.missing = list(missing or [])  # suite prompts without an accepted prediction
        self._probs = None if probs is None else np.asarray(probs, dtype=np.float64)
        self.rows = rows if rows is not None else PredictionRows.from_dense(self._probs)
        if len(self.rows) != len(self.prompt_ids):
            raise ValueError(f"{len(self.prompt_ids)} prompt ids for {len(self.rows)} rows")

    @property
    def probs(self) -> np.ndarray:
        """(n, vocab) float64, rows strictly positive and summing to 1 (whole rows in suite order are not copied)."""
        if self._probs is None:
            r = self.rows
            if (isinstance(r.full, np.ndarray) and r.is_full.all() and len(r.full) == len(r)
                    and np.array_equal(r.full_index, np.arange(len(r)))):
                self._probs = r.full
            else:
                self._probs = r.dense()
                if r.is_full.all():  # keep one copy of whole rows, not two
                    self.rows = PredictionRows.from_dense(self._probs, r.background)
        return self._probs

    def digest(self) -> str:
        """The holdout ledger's identity of these predictions: ``predictors.digest.predictions_digest`` (``"v2:"`` +
        sha256 over per-row sha256s of the prompt id and the row as kept: whole rows as float64, named-token rows as
        named), rows hashed on the chunk workers; the same value a stream of the same predictions gives
        (``evals.stream_scoring``)."""
        from .digest import predictions_digest

        return predictions_digest(self.prompt_ids, self.rows)

    def __repr__(self) -> str:
        return (f"ValidatedPredictions({len(self.prompt_ids)} rows, {int(self.rows.is_full.sum())} whole, "
                f"{len(self.errors)} errors, {len(self.missing)} missing)")
