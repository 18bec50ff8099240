"""Files of predictions: streamed reading and validation, and writing that reads back.

Files are read line by line as bytes: each line is strict UTF-8 (it may contain U+FFFD; bad bytes reject their line
only), a byte-order mark is accepted at the start of the file only, an object naming a key twice is rejected naming
the key (``tasks.io.loads_json``). ``validate_file`` streams (4 MiB reads), keeping only accepted rows
(``predictors.rows``); near-match suggestions (~0.1 s each) go to a file's first ``HINT_LIMIT`` distinct unknown names
only. A full-vector line (``probs_b64``) is parsed without running the JSON parser over its vector, to the same
result (``_parse_full_vector``). ``write_jsonl`` writes atomically, naming each token so that it reads back as the same
id (``readable``).
"""

from __future__ import annotations

import binascii
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pybase64

from tasks.io import BOM, DuplicateKeyError, atomic_write, loads_json
from tasks.vocab import Vocabulary

from .format import Prediction, PredictionError, Row, check
from .rows import PredictionRows, RowBlocks, ValidatedPredictions

READ_BUFFER = 1 << 22  # bytes per read of a predictions file
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


class _Validator:
    """Checks prompt ids (unknown, duplicate) and validates predictions one at a time, keeping only accepted rows.

    A ``top`` prediction (or a mostly-zero full vector) is kept as its named tokens and rest (``check``): 16 bytes per
    named token, never a vocabulary-sized vector. A whole vector given as float32 without zeros (``probs_b64``) is kept
    as given, 4 bytes per entry, and divided by its sum when read (``rows.RowBlocks``): validation checks it in a
    reused float64 buffer and writes half the bytes to new memory. Any other whole vector is kept as its float64
    distribution. Both kinds go into blocks (``_Blocks``) in arrival order.
    """

    def __init__(self, prompt_ids: Sequence[str], vocab: Vocabulary, background: np.ndarray | None,
                 errors: list[str]) -> None:
        self.prompt_ids, self.vocab, self.background, self.errors = list(prompt_ids), vocab, background, errors
        self.index = {pid: i for i, pid in enumerate(self.prompt_ids)}
        self.hints = Hints(vocab)
        V = len(vocab)
        self.given, self.dists = _Blocks(V, np.float32), _Blocks(V, np.float64)  # whole rows as given / as float64
        self.scratch = np.empty(V)  # where a float32 vector is checked
        self.where: list[tuple[_Blocks, int, int]] = []  # (blocks, block, offset) of each whole row, arrival order
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
        slot, probs, left = None, pred.probs, len(self.prompt_ids) - len(self.rows)
        as_given = (isinstance(probs, np.ndarray) and probs.dtype == np.float32
                    and probs.shape == (len(self.vocab),))
        if as_given:
            slot = self.scratch
        elif probs is not None:  # a full vector may be kept whole: validate it straight into the next block slot
            slot = self.dists.slot(left)
        try:
            row = check(pred, self.vocab, self.background, explain=self.hints, out=slot)
        except PredictionError as e:
            self.errors.append(f"{at}{e}")
            return
        if row.full is not None:
            if as_given and probs.min() > 0:  # validated, so no entry is negative or NaN: none is zero
                blocks = self.given
                blocks.slot(left)[:] = probs
            else:
                blocks = self.dists
                target = blocks.slot(left)
                if row.full is not target:
                    target[:] = row.full
            self.where.append((blocks, *blocks.commit()))
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
        if len(self.dists.blocks) == 1 and not self.given.blocks:
            full: Any = self.dists.blocks[0][: len(self.where)]
        else:
            first = {self.given: 0, self.dists: len(self.given.blocks)}  # given blocks first, then the float64 ones
            where = np.array([(first[blocks] + b, o) for blocks, b, o in self.where], dtype=np.int64).reshape(-1, 2)
            full = RowBlocks(self.given.blocks + self.dists.blocks, where)
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
    # a 4 MiB buffer: a full-vector line is ~262 KB (49,152 entries) to 1.4 MB (256,000); 8 KB reads made reading the
    # first cost 4x its parsing, 1 MiB reads doubled the reading of the second (a .gz keeps gzip's own small reads,
    # so a truncated file still yields every line before the damage)
    opened = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb", buffering=READ_BUFFER)
    with opened as f:
        try:
            for n, data in enumerate(f, 1):
                yield n, data
        except (OSError, EOFError, zlib.error) as e:
            yield n + 1, f"cannot read the file from here on ({e}); later lines are not read"


FAST_B64_MIN = 4096  # bytes of base64 from which a full-vector line takes the shortcut (below it parsing is cheap)
_KEY = b'"probs_b64"'
_MARK = "#~probs_b64~#"  # stands in for the vector while the rest of the line is parsed: never valid outside a string
_MARK_BYTES = _MARK.encode()
_JSON_SPACE = b" \t\r\n"


def _count_mark(value: Any) -> int:
    """How many strings (keys, values, list items) in a parsed JSON value are ``_MARK`` (iterative: no depth limit)."""
    count, todo = 0, [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            count += v == _MARK
        elif isinstance(v, dict):
            count += sum(k == _MARK for k in v)
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return count


def _parse_full_vector(n: int, data: bytes) -> Prediction | None:
    """The prediction of a ``probs_b64`` line without running the JSON parser over its vector, or None where this
    shortcut does not apply; then the caller parses the whole line, which gives every rejection and its message.

    The vector's string is found as the first ``"probs_b64"`` followed by optional JSON white space, ``:``, white
    space and ``"``: the bytes from there up to the next ``"``. They must decode as strict base64 of whole float32
    values: then they hold neither ``\\`` nor a control or non-ASCII byte, so as a JSON string they are themselves. The
    rest of the line is parsed with the vector replaced by ``_MARK`` (the same rules: ``decode_line``); the shortcut
    stands only if that parse succeeds and the object's top-level ``probs_b64`` is ``_MARK`` and no other string in it
    is. A ``#`` is invalid outside a string, so the mark parsed as a string token means the vector's own quotes delimit
    one, and the mark being the only such string means that token is the top-level ``probs_b64`` value: the whole line
    parses to the same object with the vector in its place. A fifth of the JSON parser's time over the whole line
    (~0.04 ms for 49,152 entries, reading the line aside; ``bench/score.py``).
    """
    start, key, size = -1, data.find(_KEY), len(data)
    while key >= 0:  # the first "probs_b64" followed by a colon and a string
        i = key + len(_KEY)
        while i < size and data[i] in _JSON_SPACE:
            i += 1
        if i < size and data[i] == 58:  # ":"
            i += 1
            while i < size and data[i] in _JSON_SPACE:
                i += 1
            if i < size and data[i] == 34:  # '"'
                start = i + 1
                break
        key = data.find(_KEY, key + 1)
    if start < 0:
        return None
    end = data.find(b'"', start)
    if end - start < FAST_B64_MIN:
        return None
    try:
        raw = pybase64.b64decode(memoryview(data)[start:end], validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    if len(raw) % 4:
        return None
    try:
        obj = decode_line(n, data[:start] + _MARK_BYTES + data[end:])
    except LineError:
        return None
    if type(obj) is not dict or obj.get("probs_b64") != _MARK or _count_mark(obj) != 1:
        return None
    try:
        pred = Prediction.from_json({**obj, "probs_b64": ""})
    except PredictionError:
        return None
    return Prediction(pred.prompt_id, probs=np.frombuffer(raw, dtype="<f4"))


def _parse_line(n: int, data: bytes) -> Prediction | str | None:
    """One line's prediction, or the reason it is rejected, or None for a blank line (a long ``probs_b64`` line takes
    ``_parse_full_vector`` where it can: the same result as parsing the whole line)."""
    if len(data) > FAST_B64_MIN:
        fast = _parse_full_vector(n, data)
        if fast is not None:
            return fast
    return _parse_whole_line(n, data)


def _parse_whole_line(n: int, data: bytes) -> Prediction | str | None:
    """``_parse_line`` by the JSON parser over the whole line, the definition the shortcut is tested against."""
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
    Memory: the accepted rows (a whole row is one float64 vector, or float32 as given; at most 1.25x while growing)
    plus one line."""
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
