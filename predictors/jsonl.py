"""Files of predictions: streamed reading and validation, and writing that reads back.

Files are read line by line as bytes: each line is strict UTF-8 (it may contain U+FFFD; bad bytes reject their line
only), a byte-order mark is accepted at the start of the file only, an object naming a key twice is rejected naming
the key (``tasks.io.loads_json``). ``validate_file`` streams (1 MiB reads), keeping only accepted rows
(``predictors.rows``); near-match suggestions (~0.1 s each) go to a file's first ``HINT_LIMIT`` distinct unknown names
only. ``write_jsonl`` writes atomically, naming each token so that it reads back as the same id (``readable``).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from tasks.io import BOM, DuplicateKeyError, atomic_write, loads_json
from tasks.vocab import Vocabulary

from .format import Prediction, PredictionError, Row, check
from .rows import PredictionRows, RowBlocks, ValidatedPredictions

READ_BUFFER = 1 << 20  # bytes per read of a predictions file
HINT_LIMIT = 20  # distinct unknown names per file that get near-match suggestions
BOM_BYTES = BOM.encode("utf-8")


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


BLANK = object()  # what ``decode_line`` gives for a blank line


class LineError(ValueError):
    """A line of a JSONL file that is not strict UTF-8 JSON; the message says why, without the line number."""


def decode_line(n: int, data: bytes) -> Any:
    """The JSON value of line ``n`` (1-based) of a JSONL file, or ``BLANK`` for a blank line.

    The byte-level rules every predictions format shares: strict UTF-8 (U+FFFD in the text is a character like any
    other, bad bytes are not), a byte-order mark only at the start of the file, strict JSON (``tasks.io.loads_json``:
    no duplicate keys). Raises ``LineError`` naming what is wrong."""
    if n == 1 and data.startswith(BOM_BYTES):
        data = data[len(BOM_BYTES):]
    if not data or data.isspace():  # blank (isspace: no copy of a long line)
        return BLANK
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line); save the "
                        "file as UTF-8") from e
    if text.startswith(BOM):
        raise LineError("starts with a byte-order mark (U+FEFF), allowed only at the start of the file "
                        "(concatenated files?)")
    try:
        return loads_json(text)
    except json.JSONDecodeError as e:
        raise LineError(f"malformed JSON ({e.msg} at column {e.colno})") from e
    except DuplicateKeyError as e:
        raise LineError(str(e)) from e
    except RecursionError as e:
        raise LineError("malformed JSON (nested too deeply)") from e
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise LineError(f"unreadable JSON ({e})") from e


def raw_lines(path: Path) -> Iterator[tuple[int, bytes | str]]:
    """``(line number, bytes)`` of a JSONL file (``.gz`` too); a file that cannot be read on (a truncated ``.gz``)
    ends with ``(n, message)`` for the first unreadable line."""
    path, n = Path(path), 0
    # a 1 MiB buffer: a full-vector line is ~262 KB, and 8 KB reads made reading it cost 4x its parsing (a .gz keeps
    # gzip's own small reads, so a truncated file still yields every line before the damage)
    opened = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb", buffering=READ_BUFFER)
    with opened as f:
        try:
            for n, data in enumerate(f, 1):
                yield n, data
        except (OSError, EOFError, zlib.error) as e:
            yield n + 1, f"cannot read the file from here on ({e}); later lines are not read"


def _parse_line(n: int, data: bytes) -> Prediction | str | None:
    """One line's prediction, or the reason it is rejected, or None for a blank line."""
    try:
        obj = decode_line(n, data)
    except LineError as e:
        return str(e)
    if obj is BLANK:
        return None
    try:
        return Prediction.from_json(obj)
    except PredictionError as e:
        return str(e)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Prediction | str]]:
    """Stream a predictions file (``.gz`` too): ``(line number, prediction or why the line is rejected)``.

    Blank lines are skipped. A file that cannot be read on (a truncated ``.gz``) ends with a message for that line.
    """
    for n, data in raw_lines(path):
        item = data if isinstance(data, str) else _parse_line(n, data)
        if item is not None:
            yield n, item


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
