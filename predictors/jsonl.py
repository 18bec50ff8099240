"""Files of predictions: streamed reading and validation, and writing that reads back.

Files are read line by line as bytes: each line is strict UTF-8 (it may contain U+FFFD; bad bytes reject their line
only), a byte-order mark is accepted at the start of the file only, an object naming a key twice is rejected naming
the key (``tasks.io.loads_json``). ``validate_file`` streams (4 MiB reads), keeping only accepted rows
(``predictors.rows``); near-match suggestions (~0.1 s each) go to a file's first ``HINT_LIMIT`` distinct unknown names
only. A full-vector line (``probs_b64``) is parsed without running the JSON parser over its vector, to the same
result (``_parse_full_vector``). ``write_jsonl`` writes atomically, naming each token so that it reads back as the same
id (``readable``). What is checked and kept of each prediction: ``predictors.validator``; validating a file in chunks
through one reused buffer, whole rows never all held (what ``logitpred score`` does): ``predictors.stream``.
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

from .format import Prediction, PredictionError
from .rows import ValidatedPredictions
from .validator import HINT_LIMIT, Hints, KeepAll  # noqa: F401 (HINT_LIMIT, Hints: importable here as before)

READ_BUFFER = 1 << 22  # bytes per read of a predictions file
BOM_BYTES = BOM.encode("utf-8")


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
    check = KeepAll(prompt_ids, vocab, background, list(errors or []))
    for line, pred in preds:
        check.add(line, pred)
    return check.result()


def validate_file(path: Path, prompt_ids: Sequence[str], vocab: Vocabulary,
                  background: np.ndarray | None = None) -> ValidatedPredictions:
    """Read and validate a predictions file as a stream (bad lines reported in line order, good ones kept).
    Memory: the accepted rows (a whole row is one float64 vector, or float32 as given; at most 1.25x while growing)
    plus one line."""
    check = KeepAll(prompt_ids, vocab, background, [])
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
