"""Predictions for trajectory suites: how likely the target is to continue a prompt with exactly one continuation.

One JSON object per line, one line per question (a prompt and one of its continuations ``y = y_1 .. y_m``)::

    {"prompt_id": "wiki-3fa2c1d9e0aa", "continuation_id": "c0", "logprob": -7.31, "steps": [-0.2, -4.1, -3.01]}

- ``logprob``: log P(y | x) in nats (natural log), or ``log10prob``: log10 P(y | x), converted on reading
  (x ln 10). Exactly one of the two.
- ``steps`` (optional): the per-token log-probabilities log P(y_t | x, y_<t), one per token of the continuation, in
  the unit of the total (nats with ``logprob``, log10 with ``log10prob``); their sum must match the total.
- ``meta`` (optional): anything (a predictor's notes); kept out of scoring.
Step-wise *distributions* are not given here: they use the next-token format (``predictors/format.py``) on the step
prompts whose ids the suite assigns.

Validation at the boundary, line by line (``validate_file``): a rejected line names its line number, its ids and the
field; every other line is still accepted. Rejected: not a JSON object, missing or empty ids, unknown keys, ids that
are no question of the suite, both or neither of ``logprob``/``log10prob``, NaN, inf or non-numbers, a log-probability
above ``POSITIVE_TOL`` (1e-6, in the unit written; values in ``(0, 1e-6]`` are rounding and read as 0), ``steps``
of the wrong length (the continuation's token count) or with such a value, ``|sum(steps) - logprob| > SUM_TOL``
(1e-4 nats, after conversion), and a second line for the same question (naming the first; the first line to name a
question claims it, even if that line is rejected for its values, as for next-token predictions). Lines are read as
bytes: strict UTF-8, a byte-order mark only at the start of the file, duplicate JSON keys rejected (``loads_json``).

Left out: reading step distributions (next-token format), and the suite's assignment of step prompt ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from tasks.io import atomic_write

from .jsonl import BLANK, LineError, decode_line, raw_lines

LN10 = math.log(10.0)
POSITIVE_TOL = 1e-6  # largest positive log-probability read as rounding (and clipped to 0)
SUM_TOL = 1e-4  # nats: |sum(steps) - logprob| allowed
KEYS = ("prompt_id", "continuation_id", "logprob", "log10prob", "steps", "meta")

Question = tuple[str, str]  # (prompt_id, continuation_id)


class TrajectoryError(ValueError):
    """One line's prediction is invalid; the message names the ids (when known) and the field (``.field``)."""

    def __init__(self, message: str, field: str | None = None, ids: Question | None = None) -> None:
        where = f"prompt {ids[0]!r} continuation {ids[1]!r}: " if ids else ""
        super().__init__(where + message)
        self.field, self.ids = field, ids


@dataclass(frozen=True)
class TrajectoryPrediction:
    """A validated prediction of one question: log P(y | x) in nats (<= 0) and, optionally, per-step log-probs."""

    prompt_id: str
    continuation_id: str
    logprob: float
    steps: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one line (nats; ``steps`` only when given)."""
        obj: dict[str, Any] = {"prompt_id": self.prompt_id, "continuation_id": self.continuation_id,
                               "logprob": float(self.logprob)}
        if self.steps is not None:
            obj["steps"] = [float(s) for s in self.steps]
        return obj


class Rejection(NamedTuple):
    """A rejected line: its number, its ids when they could be read, and why (the message names the field)."""

    line: int
    ids: Question | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ValidatedFile(NamedTuple):
    """``validate_file``'s result: accepted predictions in file order, and the rejected lines in line order."""

    accepted: list[TrajectoryPrediction]
    rejected: list[Rejection]


def _ids(obj: Any, known: Mapping[Question, int], prompts: Container[str] | None = None) -> Question:
    """The question a parsed line names, checked against ``known``; ``TrajectoryError`` otherwise."""
    if not isinstance(obj, dict):
        raise TrajectoryError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt_id", "continuation_id"):
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise TrajectoryError(f"missing or empty {key!r} (a string)", key)
    ids = (obj["prompt_id"], obj["continuation_id"])
    if ids not in known:
        if prompts is not None and ids[0] not in prompts:
            raise TrajectoryError(f"unknown prompt_id {ids[0]!r}: not in this suite split", "prompt_id")
        if prompts is not None:
            raise TrajectoryError(f"unknown continuation_id {ids[1]!r}: prompt {ids[0]!r} has no such continuation in "
                                  "this suite split", "continuation_id")
        raise TrajectoryError(f"unknown question (prompt_id {ids[0]!r}, continuation_id {ids[1]!r}): not in this suite "
                              "split", "prompt_id")
    return ids


def _logprob(value: Any, field: str, ids: Question) -> float:
    """A log-probability as written (a finite number <= POSITIVE_TOL), clipped to <= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrajectoryError(f"{field} is {value!r}: expected a number", field, ids)
    try:
        x = float(value)
    except OverflowError:  # an integer beyond float range
        x = math.inf if value > 0 else -math.inf
    if not math.isfinite(x):
        raise TrajectoryError(f"{field} is {value!r}: a log-probability must be finite", field, ids)
    if x > POSITIVE_TOL:
        raise TrajectoryError(f"{field} is {value!r} > 0: a log-probability is <= 0 (rounding up to {POSITIVE_TOL} "
                              "is allowed)", field, ids)
    return min(x, 0.0)


def _values(obj: dict[str, Any], ids: Question, n_steps: int) -> TrajectoryPrediction:
    """The prediction of a line whose ids are known (``_ids``); ``TrajectoryError`` naming the field otherwise."""
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise TrajectoryError(f"unknown field(s) {unknown}; allowed: {', '.join(KEYS)}", unknown[0], ids)
    given = [k for k in ("logprob", "log10prob") if k in obj]
    if len(given) != 1:
        what = "both" if given else "neither of"
        raise TrajectoryError(f"give exactly one of 'logprob' (nats) and 'log10prob'; got {what} them",
                              "logprob", ids)
    field = given[0]
    scale = LN10 if field == "log10prob" else 1.0
    total = _logprob(obj[field], field, ids) * scale
    steps = None
    if "steps" in obj:
        raw = obj["steps"]
        if not isinstance(raw, list):
            raise TrajectoryError(f"'steps' must be a list of per-token log-probabilities, got {type(raw).__name__}",
                                  "steps", ids)
        if len(raw) != n_steps:
            raise TrajectoryError(f"'steps' has {len(raw)} entries; the continuation has {n_steps} tokens",
                                  "steps", ids)
        steps = tuple(_logprob(v, f"steps[{t}]", ids) * scale for t, v in enumerate(raw))
        gap = math.fsum(steps) - total
        if abs(gap) > SUM_TOL:
            raise TrajectoryError(f"'steps' sum to {math.fsum(steps):.6f} nats but {field} is {total:.6f} nats "
                                  f"(difference {gap:.2e}, tolerance {SUM_TOL})", "steps", ids)
    return TrajectoryPrediction(ids[0], ids[1], total, steps)


def parse_line(obj: Any, known: Mapping[Question, int], *,
               prompts: Container[str] | None = None) -> TrajectoryPrediction:
    """Validate one parsed line against the suite's questions ``known`` ((prompt_id, continuation_id) -> token count).

    Returns the prediction in nats, or raises ``TrajectoryError`` (a ``ValueError``) naming the ids and the field.
    ``prompts`` (the suite's prompt ids), when given, lets an unknown question say which of its two ids is unknown.
    """
    ids = _ids(obj, known, prompts)
    return _values(obj, ids, known[ids])


def _decode(n: int, data: bytes) -> Any:
    """One line's JSON value, or ``None`` for a blank line; ``TrajectoryError`` for one that is no strict JSON
    (``predictors.jsonl.decode_line``: the byte-level rules every predictions format shares)."""
    try:
        obj = decode_line(n, data)
    except LineError as e:
        raise TrajectoryError(str(e)) from e
    return None if obj is BLANK else obj


def validate_file(path: Path, known: Mapping[Question, int]) -> ValidatedFile:
    """Read and validate a trajectory predictions file as a stream; ``(accepted, rejected)``.

    ``known``: (prompt_id, continuation_id) -> the continuation's token count, for every question of the split.
    Accepted predictions come in file order; each rejected line gives (line number, ids or None, message).
    Memory: the accepted predictions plus one line.
    """
    prompts = {pid for pid, _ in known}
    first: dict[Question, int] = {}  # question -> the line that claimed it
    accepted: list[TrajectoryPrediction] = []
    rejected: list[Rejection] = []
    for n, data in raw_lines(path):
        if isinstance(data, str):
            rejected.append(Rejection(n, None, data))
            break
        ids = None
        try:
            obj = _decode(n, data)
            if obj is None:
                continue
            ids = _ids(obj, known, prompts)
            if ids in first:
                raise TrajectoryError(f"duplicate question: already given at line {first[ids]}; only the first line "
                                      "is kept", "continuation_id", ids)
            first[ids] = n
            accepted.append(_values(obj, ids, known[ids]))
        except TrajectoryError as e:
            rejected.append(Rejection(n, ids, str(e)))
    return ValidatedFile(accepted, rejected)


def missing(known: Iterable[Question], accepted: Iterable[TrajectoryPrediction]) -> list[Question]:
    """The questions of ``known`` (in its order) without an accepted prediction."""
    got = {(p.prompt_id, p.continuation_id) for p in accepted}
    return [q for q in known if q not in got]


def write_jsonl(path: Path, predictions: Iterable[TrajectoryPrediction]) -> int:
    """Write predictions one per line (nats), atomically (the old file or the whole new one); returns how many."""
    n = 0

    def write(f: IO[bytes]) -> None:
        nonlocal n
        for p in predictions:
            f.write((json.dumps(p.to_json(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
            n += 1

    atomic_write(Path(path), write)
    return n
