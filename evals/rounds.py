"""The rounds ledger of step-wise questions: step t is released and scored only after step t-1 is committed.

Step-wise questions along the target's samples (``tasks.trajectory.steps``) are asked one step per *round*: round t
shows ``x + y_<t`` and asks for the next-token distribution there. The harness keeps, per suite split (and trajectory
commitment) and predictor label, which rounds are committed, in
``<data_dir>/holdout/rounds/<suite>/<commitment[:16]>-<split>.json``:

    {"format": "logitpred-rounds/1", "suite", "split", "trajectory_commitment",
     "labels": {label: {"attempt": n, "rounds": {"1": {"run_id", "digest", "time", "kl": {sample id: nats}}, ...},
                        "complete": bool}}}

Rules (``check_release``, ``commit``):

- round 1 shows the prompts only; committing it starts a new *attempt* (the previous one, finished or not, is
  closed). On a sealed split each attempt is one sealed submission in the holdout ledger (``evals.holdout``), so
  starting over is bounded like any other resubmission;
- round t >= 2 is released (its questions shown) and scored only when round t-1 of the label's current attempt is
  committed; a round already committed in the attempt cannot be revised (a second file for it is refused);
- the per-sample KL divergences of each committed round are kept, so the trajectory KL (their sum along each sample,
  ``evals.trajectory_metrics``) is computed when the last round is committed.

Writes are atomic (``tasks.io.atomic_write_json``) under an ``fcntl`` lock. Like the holdout ledger, it records what
the harness released and scored; it does not authenticate labels.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.io import atomic_write_json, read_json
from tasks.paths import data_dir

FORMAT = "logitpred-rounds/1"


class RoundError(ValueError):
    """A step round asked out of order (before the previous one is committed) or a second time."""


def ledger_file(suite_name: str, split: str, commitment: str) -> Path:
    """Where the rounds of one suite split live (module doc); under ``$LOGITPRED_LEDGER``'s folder when that is set."""
    import os

    env = os.environ.get("LOGITPRED_LEDGER")
    root = Path(env).resolve().parent if env else data_dir() / "holdout"
    return root / "rounds" / suite_name / f"{commitment[:16]}-{split}.json"


@contextmanager
def _locked(path: Path, suite_name: str, split: str, commitment: str) -> Iterator[dict[str, Any]]:
    """The ledger's content under an exclusive lock; written back atomically when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read(path) or {"format": FORMAT, "suite": suite_name, "split": split,
                               "trajectory_commitment": commitment, "labels": {}}
        before = repr(data)
        yield data
        if repr(data) != before:
            atomic_write_json(path, data)


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ValueError as e:
        raise RoundError(f"rounds ledger {path} is unreadable ({e}): restore it from a backup; the order of step "
                         "rounds cannot be checked without it") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("labels"), dict):
        raise RoundError(f"rounds ledger {path} is not a {FORMAT} file: restore it from a backup")
    return data


def state(suite_name: str, split: str, commitment: str, label: str) -> dict[str, Any] | None:
    """The label's current attempt (``{"attempt", "rounds", "complete"}``), or None before its first round 1."""
    data = _read(ledger_file(suite_name, split, commitment))
    return None if data is None else data["labels"].get(label)


def _committed(entry: Mapping[str, Any] | None) -> int:
    """The highest round committed in a row from 1 in the current attempt (0: none)."""
    rounds = (entry or {}).get("rounds") or {}
    t = 0
    while str(t + 1) in rounds:
        t += 1
    return t


def _fix(label: str, t: int, done: int) -> str:
    if done == 0:
        return f"score round 1 for {label!r} first (`logitpred score FILE --round 1 --name {label}`)"
    return f"the next round for {label!r} is {done + 1}"


def check_release(suite_name: str, split: str, commitment: str, label: str, t: int) -> None:
    """Raise ``RoundError`` unless the questions of round ``t`` may be shown to ``label``: t = 1 always (it shows the
    prompts only), t >= 2 once round t-1 of the label's current attempt is committed."""
    if t == 1:
        return
    done = _committed(state(suite_name, split, commitment, label))
    if done < t - 1:
        raise RoundError(f"round {t} shows tokens that round {t - 1} asks about, and round {t - 1} of {label!r} on "
                         f"{suite_name}/{split} is not scored yet: {_fix(label, t, done)}")


def commit(suite_name: str, split: str, commitment: str, label: str, t: int, *, run_id: str | None, digest: str,
           kl: Mapping[str, float]) -> dict[str, Any]:
    """Commit round ``t`` of ``label`` (module doc) with its per-sample KL divergences ``kl`` (sample id -> nats);
    returns the label's attempt after the commit. Round 1 starts a new attempt; round t >= 2 needs round t-1 of the
    current attempt and refuses a round already committed. Raises ``RoundError`` naming the round to score next."""
    path = ledger_file(suite_name, split, commitment)
    with _locked(path, suite_name, split, commitment) as data:
        entry = data["labels"].get(label)
        if t == 1:
            entry = {"attempt": (entry or {}).get("attempt", 0) + 1, "rounds": {}, "complete": False}
        else:
            done = _committed(entry)
            if str(t) in (entry or {}).get("rounds", {}):
                raise RoundError(f"round {t} of {label!r} on {suite_name}/{split} is already scored: a committed "
                                 f"round cannot be revised (start a new attempt with round 1; on sealed it counts "
                                 f"as a new submission)")
            if done < t - 1:
                raise RoundError(f"round {t} of {label!r} on {suite_name}/{split} cannot be scored before round "
                                 f"{t - 1}: {_fix(label, t, done)}")
        entry["rounds"][str(t)] = {"run_id": run_id, "digest": digest, "time": datetime.now(UTC).isoformat(),
                                   "kl": {k: float(v) for k, v in kl.items()}}
        data["labels"][label] = entry
        return dict(entry)


def mark_complete(suite_name: str, split: str, commitment: str, label: str) -> None:
    """Mark the label's current attempt complete (every round committed)."""
    with _locked(ledger_file(suite_name, split, commitment), suite_name, split, commitment) as data:
        if label in data["labels"]:
            data["labels"][label]["complete"] = True
