"""The one prediction format, and its validation at the boundary.

A prediction for one prompt is a JSON object (one per line in a ``.jsonl`` file)::

    {"prompt_id": "wiki-3fa2c1d9e0aa", "top": {" Paris": 0.6, " the": 0.1}, "rest": "uniform"}

- ``top``: candidate -> probability. Candidates are token texts as they decode (``" Paris"``), raw tokenizer forms
  (``"ĠParis"``) or, in the list form ``[[" Paris", 0.6], [12, 0.1]]``, integer token ids. A name is matched exactly,
  then in its Unicode NFC form, and must name exactly one token: a name that is the decoded text of several tokens, or
  one token's text and another's raw form, is refused as ambiguous, listing every id it names (``tasks/vocab.py``).
- ``rest``: how the remaining mass ``1 - sum(top)`` spreads over all *other* tokens: ``"uniform"`` (default) or
  ``"unigram"`` (proportional to the suite's train-part unigram).
- Or a full vector: ``"probs": [...]`` (vocabulary-sized list) or ``"probs_b64"`` (base64 of little-endian float32),
  which must sum to 1 within ``tol``.

Validation defines every prediction as a full, strictly positive distribution, so every metric is finite:
- the named mass may not exceed 1 by more than ``tol`` (1e-3); NaN, inf, negatives and unknown tokens are rejected;
- at least ``min_rest`` (1e-6) is left for the rest: if the named mass leaves less, the named probabilities are scaled
  by ``(1 - min_rest) / sum`` (documented, not silent: it changes probabilities by at most ``tol + min_rest``);
- a full vector's zero entries are treated as unnamed tokens and share ``min_rest`` by the rest rule.
Errors name the line, the prompt id and the field; a bad line never discards good ones (see ``validate_file``).

What validation keeps is the prediction as given (``check`` -> ``Row``; a file's or predictor's rows ->
``PredictionRows``): named token ids, their probabilities after the min-rest scaling, the rest and its rule, so a
``top`` prediction costs 16 bytes per named token, not a vocabulary-sized vector; full vectors (unless mostly zeros)
are kept whole. ``densify`` / ``expand`` / ``ValidatedPredictions.probs`` give the float64 vector, bit for bit as
before; scoring (``evals.sparse``) never needs it for a sparse row.

Files are read line by line as bytes: each line is strict UTF-8 (it may contain U+FFFD; bad bytes reject their line
only), a byte-order mark is accepted at the start of the file only, an object naming a key twice is rejected naming
the key (``tasks.io.loads_json``). ``validate_file`` streams (1 MiB reads), keeping only accepted rows; near-match
suggestions (~0.1 s each) go to a file's first ``HINT_LIMIT`` distinct unknown names only.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pybase64  # SIMD base64: decoding a 49k-entry vector in 9 us, not 330 us (the stdlib's)

from tasks.io import BOM, DuplicateKeyError, atomic_write, loads_json
from tasks.vocab import Vocabulary

REST_RULES = ("uniform", "unigram")
TOL = 1e-3
MIN_REST = 1e-6
SPARSE_FRACTION = 0.125  # a full vector with at most this share of non-zero entries is kept sparse
READ_BUFFER = 1 << 20  # bytes per read of a predictions file
HINT_LIMIT = 20  # distinct unknown names per file that get near-match suggestions
BOM_BYTES = BOM.encode("utf-8")


class PredictionError(ValueError):
    """One prediction is invalid; the message names the prompt and field."""


@dataclass(frozen=True)
class Prediction:
    """One prompt's prediction as given: ``top`` (names or ids -> p) with a ``rest`` rule, or a full vector."""

    prompt_id: str
    top: Mapping[str | int, float] | Sequence[tuple[str | int, float]] = field(default_factory=dict)
    rest: str = "uniform"
    probs: np.ndarray | None = None  # full vector instead of top/rest

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one line: ``top`` as an object when every candidate is a string, else as a list."""
        if self.probs is not None:
            data = np.asarray(self.probs, dtype="<f4").tobytes()
            return {"prompt_id": self.prompt_id, "probs_b64": pybase64.b64encode(data).decode()}
        top = self.top.items() if isinstance(self.top, Mapping) else self.top
        if all(isinstance(c, str) for c, _ in top):
            return {"prompt_id": self.prompt_id, "top": {c: float(p) for c, p in top}, "rest": self.rest}
        return {"prompt_id": self.prompt_id, "top": [[c, float(p)] for c, p in top], "rest": self.rest}

    @classmethod
    def from_json(cls, obj: Any) -> Prediction:
        """The prediction of one parsed line; ``PredictionError`` for a wrong shape (tokens are checked by densify)."""
        if not isinstance(obj, dict):
            raise PredictionError(f"expected a JSON object, got {type(obj).__name__}")
        pid = obj.get("prompt_id")
        if not isinstance(pid, str) or not pid:
            raise PredictionError("missing or empty 'prompt_id' (a string)")
        unknown = set(obj) - {"prompt_id", "top", "rest", "probs", "probs_b64", "meta"}
        if unknown:
            raise PredictionError(f"prompt {pid}: unknown field(s) {sorted(unknown)}; allowed: top, rest, probs, probs_b64")
        if "probs" in obj or "probs_b64" in obj:
            if "top" in obj:
                raise PredictionError(f"prompt {pid}: give either 'top' or a full vector, not both")
            if "probs_b64" in obj:
                try:
                    probs = np.frombuffer(pybase64.b64decode(obj["probs_b64"], validate=True), dtype="<f4")
                except (binascii.Error, ValueError, TypeError) as e:
                    raise PredictionError(f"prompt {pid}: 'probs_b64' is not base64 of float32 values ({e})") from e
            else:
                try:
                    probs = np.asarray(obj["probs"], dtype=np.float64)
                except (TypeError, ValueError, OverflowError) as e:
                    raise PredictionError(f"prompt {pid}: 'probs' must be a list of numbers ({e})") from e
                if probs.ndim != 1:
                    raise PredictionError(f"prompt {pid}: 'probs' must be a flat list of numbers")
            return cls(pid, probs=probs)
        top = obj.get("top", {})
        if isinstance(top, dict):
            pairs = list(top.items())
        elif isinstance(top, list) and all(isinstance(x, list) and len(x) == 2 for x in top):
            pairs = [(c, p) for c, p in top]
        else:
            raise PredictionError(f"prompt {pid}: 'top' must be an object {{token: p}} or a list of [token, p] pairs")
        return cls(pid, pairs, obj.get("rest", "uniform"))


class Row(NamedTuple):
    """One validated prediction as it is kept: named tokens and a rest rule (``full`` is None), or a whole vector.

    The distribution is ``q[ids] = ps`` and, over every other token, ``rest`` spread by the rule (uniform, or the
    background unigram renormalized over the unnamed tokens); ``expand`` writes it out exactly as ``densify`` does.
    """

    ids: np.ndarray | None  # named token ids (int64), in the order given
    ps: np.ndarray | None  # their probabilities after the min-rest scaling (float64, > 0)
    rest: float  # the mass of the unnamed tokens (>= min_rest); 0.0 for a whole vector
    unigram: bool  # rest rule: True for "unigram", False for "uniform"
    full: np.ndarray | None  # the whole distribution (float64), for a row kept dense


def check(pred: Prediction, vocab: Vocabulary, background: np.ndarray | None = None, *, tol: float = TOL,
          min_rest: float = MIN_REST, explain: Callable[[str], str] | None = None,
          sparse_fraction: float = SPARSE_FRACTION, out: np.ndarray | None = None) -> Row:
    """Validate one prediction (the rules of ``densify``) and return it without densifying what it did not say.

    A ``top`` prediction comes back as its named tokens and rest; a full vector with at most ``sparse_fraction`` of
    the vocabulary non-zero likewise (its zeros are the unnamed tokens); any other full vector, or one naming every
    token, as a whole vector. ``expand(check(...))`` is bit for bit ``densify(...)``.
    """
    V, pid = len(vocab), pred.prompt_id
    if pred.rest not in REST_RULES:
        raise PredictionError(f"prompt {pid}: 'rest' is {pred.rest!r}; use one of {', '.join(REST_RULES)}")
    if pred.rest == "unigram" and background is None:
        raise PredictionError(f"prompt {pid}: rest 'unigram' needs the suite's background unigram")
    if pred.probs is not None:
        q = np.ascontiguousarray(pred.probs, dtype=np.float64)
        if q.shape != (V,):
            raise PredictionError(f"prompt {pid}: full vector has {q.size} entries; the target's vocabulary has {V}")
        total = q.sum()
        if not (math.isfinite(total) and q.min() >= 0):  # a finite sum means no NaN or inf entry
            bad = np.flatnonzero(~np.isfinite(q) | (q < 0))
            if bad.size:
                raise PredictionError(f"prompt {pid}: probs[{bad[0]}] = {q[bad[0]]} is not a finite non-negative "
                                      "number")
        if abs(total - 1.0) > tol:
            raise PredictionError(f"prompt {pid}: full vector sums to {total:.6f}, not 1 (tolerance {tol})")
        if np.count_nonzero(q) == V:  # every token named: q / total (ps = q, and ps.sum() is total)
            return Row(None, None, 0.0, False, q / total if out is None else np.divide(q, total, out=out))
        named = np.flatnonzero(q > 0)
        ps = q[named]
    else:
        explain = explain or vocab.explain_unknown
        pairs = list(pred.top.items()) if isinstance(pred.top, Mapping) else list(pred.top)
        named_list, ps_list = [], []
        for cand, p in pairs:
            if isinstance(cand, bool) or not isinstance(cand, (str, int)):
                raise PredictionError(f"prompt {pid}: top[{cand!r}]: a candidate must be a token string or an "
                                      "integer id")
            if isinstance(cand, int):
                if not 0 <= cand < V:
                    raise PredictionError(f"prompt {pid}: top[{cand!r}]: token id out of range [0, {V})")
                tid = cand
            else:
                tid = vocab.lookup(cand)
                if tid is None:
                    raise PredictionError(f"prompt {pid}: top[{cand!r}]: {explain(cand)}")
            if isinstance(p, int) and not isinstance(p, bool) and abs(p) > 1:  # huge ints overflow math.isfinite
                raise PredictionError(f"prompt {pid}: top[{cand!r}]: probability {p!r} is above 1")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
                raise PredictionError(f"prompt {pid}: top[{cand!r}]: probability {p!r} is not a finite number >= 0")
            if p > 0:
                named_list.append(tid)
                ps_list.append(float(p))
        if len(set(named_list)) != len(named_list):
            seen = {}
            for t in named_list:
                seen[t] = seen.get(t, 0) + 1
            dup = next(t for t in named_list if seen[t] > 1)
            raise PredictionError(f"prompt {pid}: token {dup} ({vocab.text[dup]!r}) is named more than once in 'top'")
        named = np.array(named_list, dtype=np.int64)
        ps = np.array(ps_list, dtype=np.float64)
        total = ps.sum()
        if total > 1.0 + tol:
            raise PredictionError(f"prompt {pid}: 'top' probabilities sum to {total:.6f} > 1 (tolerance {tol})")
    total = ps.sum()
    if named.size == V:  # every token named: nothing to spread, only rounding to remove
        q = np.empty(V)
        q[named] = ps / total
        return Row(None, None, 0.0, False, q)
    rest = 1.0 - total
    if rest < min_rest:
        ps = ps * ((1.0 - min_rest) / total)
        rest = min_rest
    row = Row(named, ps, float(rest), pred.rest == "unigram", None)
    if pred.probs is not None and named.size > sparse_fraction * V:
        return row._replace(ids=None, ps=None, rest=0.0, unigram=False, full=expand(row, V, background, out=out))
    return row


def expand(row: Row, vocab_size: int, background: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The full distribution (float64) of a validated row, bit for bit what ``densify`` returns for it."""
    q = np.empty(vocab_size) if out is None else out
    if row.full is not None:
        q[:] = row.full
        return q
    if row.unigram:
        others = np.ones(vocab_size, dtype=bool)
        others[row.ids] = False
        weights = background[others]
        q[others] = row.rest * weights / weights.sum()
    else:  # rest * ones / (count of ones) is rest / count, exactly
        q.fill(row.rest / (vocab_size - row.ids.size))
    q[row.ids] = row.ps
    return q


def densify(pred: Prediction, vocab: Vocabulary, background: np.ndarray | None = None, *, tol: float = TOL,
            min_rest: float = MIN_REST, explain: Callable[[str], str] | None = None) -> np.ndarray:
    """Validate one prediction and return its full, strictly positive distribution (float64, sums to 1).

    ``explain(name)`` words the refusal of a name that is no single token (default: ``vocab.explain_unknown``, with
    near-match suggestions; files use a ``Hints`` budget instead). Scoring does not need this vector: ``check``
    returns the same prediction without densifying what it did not say.
    """
    row = check(pred, vocab, background, tol=tol, min_rest=min_rest, explain=explain, sparse_fraction=1.0)
    return row.full if row.full is not None else expand(row, len(vocab), background)


class RowBlocks:
    """Whole rows held in a few blocks, appended without copying (a growing single buffer copies itself on every
    realloc): row j is ``blocks[where[j, 0]][where[j, 1]]``. Indexing with an int gives that row (a view), with an
    array of ints a new ``(len, V)`` array."""

    def __init__(self, blocks: list[np.ndarray], where: np.ndarray) -> None:
        self.blocks, self.where = blocks, np.asarray(where, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.where)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.where), self.blocks[0].shape[1] if self.blocks else 0

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            b, o = self.where[index]
            return self.blocks[b][o]
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.shape[1]))
        for j, i in enumerate(index):
            b, o = self.where[i]
            out[j] = self.blocks[b][o]
        return out


class PredictionRows:
    """Validated predictions of ``n`` prompts, kept as given: named tokens plus a rest rule, or whole vectors.

    Sparse rows are in CSR form: row ``i`` names ``ids[indptr[i]:indptr[i+1]]`` (sorted) with probabilities ``vals``
    (after the min-rest scaling) and spreads ``rest[i]`` over every other token, uniformly or (``unigram[i]``) by the
    background renormalized over the unnamed tokens. A row kept whole is ``full[full_index[i]]`` (``full_index`` is
    -1 for sparse rows). Memory: 16 bytes per named token, 8 per vocabulary entry of a whole row.
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

    def digest(self, prefix: bytes = b"") -> str:
        """sha256 of ``prefix`` followed by the full float64 rows in order (``prefix + dense().tobytes()``), computed
        one row at a time."""
        h, buf = hashlib.sha256(prefix), np.empty(self.vocab_size)
        for i in range(len(self)):
            h.update(self.full[self.full_index[i]].tobytes() if self.full_index[i] >= 0
                     else expand(self.row(i), self.vocab_size, self.background, out=buf).tobytes())
        return h.hexdigest()


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
        """sha256 of the prompt ids (JSON) and the full float64 rows: ``sha256(json.dumps(prompt_ids).encode() +
        probs.tobytes())``, computed one row at a time (the holdout ledger's identity of a submission)."""
        return self.rows.digest(json.dumps(self.prompt_ids).encode())

    def __repr__(self) -> str:
        return (f"ValidatedPredictions({len(self.prompt_ids)} rows, {int(self.rows.is_full.sum())} whole, "
                f"{len(self.errors)} errors, {len(self.missing)} missing)")


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


class _Validator:
    """Checks prompt ids (unknown, duplicate) and validates predictions one at a time, keeping only accepted rows.

    A ``top`` prediction (or a mostly-zero full vector) is kept as its named tokens and rest (``check``): 16 bytes per
    named token, never a vocabulary-sized vector. Whole vectors go into float64 blocks in arrival order, each new block
    a quarter of the capacity so far (at least 8 rows): the peak stays within 1.25x the whole rows (plus 8) and no row
    is ever copied again (a single growing buffer copies itself on every realloc).
    """

    def __init__(self, prompt_ids: Sequence[str], vocab: Vocabulary, background: np.ndarray | None,
                 errors: list[str]) -> None:
        self.prompt_ids, self.vocab, self.background, self.errors = list(prompt_ids), vocab, background, errors
        self.index = {pid: i for i, pid in enumerate(self.prompt_ids)}
        self.hints = Hints(vocab)
        self.blocks: list[np.ndarray] = []  # whole rows, in arrival order
        self.capacity = self.used = 0  # rows in all blocks; rows used in the last block
        self.where: list[tuple[int, int]] = []  # (block, offset) of each whole row
        self.rows: list[Row] = []  # every accepted row (whole ones marked _WHOLE: they are in the blocks)
        self.positions: list[int] = []  # the suite position of each accepted row

    def add(self, line: int | None, pred: Prediction) -> None:
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
        slot = None
        if pred.probs is not None:  # a full vector may be kept whole: validate it straight into the next block slot
            if not self.blocks or self.used == len(self.blocks[-1]):
                left = len(self.prompt_ids) - len(self.rows)  # prompts that may still get a row
                size = max(1, min(left, max(8, self.capacity // 4)))
                self.blocks.append(np.empty((size, len(self.vocab))))
                self.capacity, self.used = self.capacity + size, 0
            slot = self.blocks[-1][self.used]
        try:
            row = check(pred, self.vocab, self.background, explain=self.hints, out=slot)
        except PredictionError as e:
            self.errors.append(f"{at}{e}")
            return
        if row.full is not None:
            if row.full is not slot:
                self.blocks[-1][self.used] = row.full
            self.where.append((len(self.blocks) - 1, self.used))
            self.used += 1
            row = row._replace(full=_WHOLE)
        self.rows.append(row)
        self.positions.append(position)

    def result(self) -> ValidatedPredictions:
        order = np.argsort(self.positions, kind="stable")  # suite-order row j is arrival row order[j]
        whole_arrival = np.cumsum([r.full is not None for r in self.rows]) - 1  # arrival row -> its whole-row number
        rows = [self.rows[i] for i in order]
        is_whole = np.array([r.full is not None for r in rows], dtype=bool)
        full_index = np.full(len(rows), -1, dtype=np.int64)
        full_index[is_whole] = whole_arrival[order[is_whole]] if len(rows) else []
        if len(self.blocks) == 1:
            full: Any = self.blocks[0][: len(self.where)]
        else:
            full = RowBlocks(self.blocks, np.array(self.where, dtype=np.int64).reshape(-1, 2))
        stored = PredictionRows.from_rows(rows, len(self.vocab), self.background, full=full, full_index=full_index)
        accepted = [self.prompt_ids[i] for i in sorted(self.positions)]
        taken = set(accepted)
        return ValidatedPredictions(accepted, errors=self.errors, missing=[p for p in self.prompt_ids if p not in taken],
                                    rows=stored)


_WHOLE = np.zeros(0)  # marks a row kept whole in the validator's buffer


def _parse_line(n: int, data: bytes) -> Prediction | str | None:
    """One line's prediction, or the reason it is rejected, or None for a blank line."""
    if n == 1 and data.startswith(BOM_BYTES):
        data = data[len(BOM_BYTES):]
    if not data or data.isspace():  # blank (isspace: no copy of a long line)
        return None
    try:
        text = data.decode("utf-8")  # strict: U+FFFD in the text is a character like any other, bad bytes are not
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line); save the file as UTF-8"
    if text.startswith(BOM):
        return "starts with a byte-order mark (U+FEFF), allowed only at the start of the file (concatenated files?)"
    try:
        obj = loads_json(text)
    except json.JSONDecodeError as e:
        return f"malformed JSON ({e.msg} at column {e.colno})"
    except DuplicateKeyError as e:
        return str(e)
    except RecursionError:
        return "malformed JSON (nested too deeply)"
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        return f"unreadable JSON ({e})"
    try:
        return Prediction.from_json(obj)
    except PredictionError as e:
        return str(e)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Prediction | str]]:
    """Stream a predictions file (``.gz`` too): ``(line number, prediction or why the line is rejected)``.

    Blank lines are skipped. A file that cannot be read on (a truncated ``.gz``) ends with a message for that line.
    """
    path, n = Path(path), 0
    # a 1 MiB buffer: a full-vector line is ~262 KB, and 8 KB reads made reading it cost 4x its parsing (a .gz keeps
    # gzip's own small reads, so a truncated file still yields every line before the damage)
    opened = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb", buffering=READ_BUFFER)
    with opened as f:
        try:
            for n, data in enumerate(f, 1):
                item = _parse_line(n, data)
                if item is not None:
                    yield n, item
        except (OSError, EOFError, zlib.error) as e:
            yield n + 1, f"cannot read the file from here on ({e}); later lines are not read"


def read_jsonl(path: Path) -> tuple[list[tuple[int, Prediction]], list[str]]:
    """Parse a whole predictions file: (line number, prediction) pairs and messages for lines that failed.

    Holds every parsed line; to score a file use ``validate_file``, which streams.
    """
    preds, errors = [], []
    for n, item in iter_jsonl(path):
        if isinstance(item, str):
            errors.append(f"line {n}: {item}")
        else:
            preds.append((n, item))
    return preds, errors


def validate(preds: Iterable[tuple[int | None, Prediction]], prompt_ids: Sequence[str], vocab: Vocabulary,
             background: np.ndarray | None = None, *, errors: list[str] | None = None) -> ValidatedPredictions:
    """Check ids (unknown, duplicate) and turn each prediction into a full distribution; collect every problem.

    ``preds`` is consumed one at a time (a generator streams); ``errors`` (not modified) come first in the result.
    """
    check = _Validator(prompt_ids, vocab, background, list(errors or []))
    for line, pred in preds:
        check.add(line, pred)
    return check.result()


def validate_file(path: Path, prompt_ids: Sequence[str], vocab: Vocabulary,
                  background: np.ndarray | None = None) -> ValidatedPredictions:
    """Read and validate a predictions file as a stream (bad lines reported in line order, good ones kept).
    Memory: the accepted rows (one float64 vector per accepted prompt, at most 1.25x while growing) plus one line."""
    check = _Validator(prompt_ids, vocab, background, [])
    for n, item in iter_jsonl(path):
        if isinstance(item, str):
            check.errors.append(f"line {n}: {item}")
        else:
            check.add(n, item)
    return check.result()


def readable(pred: Prediction, vocab: Vocabulary) -> Prediction:
    """``pred`` with each candidate in the form that reads back as the token it means and is easiest to read.

    An id (or a string meaning it, see ``vocab.intended``) is written as the token's decoded text when that text names
    it alone, else as the integer id. A string that means no id (names no token, or is the text of several) is kept
    as written: its line is rejected on reading, as it would be anyway.
    """
    if pred.probs is not None:
        return pred
    pairs = list(pred.top.items()) if isinstance(pred.top, Mapping) else list(pred.top)
    out = []
    for cand, p in pairs:
        tid = vocab.intended(cand) if isinstance(cand, str) else cand
        if isinstance(tid, (int, np.integer)) and not isinstance(tid, bool) and 0 <= tid < len(vocab):
            tid = int(tid)
            cand = vocab.text[tid] if vocab.lookup(vocab.text[tid]) == tid else tid
        out.append((cand, p))
    return pred if out == pairs else Prediction(pred.prompt_id, out, pred.rest)


def write_jsonl(path: Path, preds: Iterable[Prediction], vocab: Vocabulary | None = None) -> int:
    """Write predictions as JSONL (atomically: the old file or the whole new one); returns how many were written.

    With ``vocab``, candidates are written so that reading the file back gives the same ids (see ``readable``): as
    decoded text where it names the token alone, else as the integer id (then ``top`` is the list form ``[[id, p]]``).
    """
    n = 0

    def write(f: IO[bytes]) -> None:
        nonlocal n
        for p in preds:
            f.write(json_line(p, vocab).encode("utf-8"))
            n += 1

    atomic_write(Path(path), write)
    return n


def json_line(pred: Prediction, vocab: Vocabulary | None = None) -> str:
    """One line of a predictions file (with its newline), as ``write_jsonl`` writes it (``readable`` with ``vocab``)."""
    p = readable(pred, vocab) if vocab is not None else pred
    return json.dumps(p.to_json(), ensure_ascii=False) + "\n"
