"""Holdout hygiene for sealed splits: a per-predictor submission ledger, a limit, and coarse release of scores.

Every scoring against a sealed split (``evals.scoring.score``; on trajectory suites
``evals.trajectory_scoring`` for whole continuations and ``evals.stepwise`` once per step-wise attempt; the inspect
tasks; the gate) appends one line to
``<data_dir>/holdout/submissions.jsonl`` (or ``$LOGITPRED_LEDGER``): suite, ``prompts`` (sha256 of the suite's
``sealed.jsonl``), the sealed commitment at the time, predictor, run id, time, how it was scored. A predictor's count
is the number of lines for the suite's *sealed prompts*: the count belongs to the questions, so recomputing truth
(another batch size or machine changes the last float bits, hence the commitment) does not reset it, while a suite
rebuilt with other prompts is a new holdout. Lines written before ``prompts`` was recorded (they carry only
``commitment``) count for the prompts that a newer line with the same commitment names, else for the suite whose
current commitment they name. A line's ``digest`` identifies the predictions scored (``predictors.digest``: format 2,
``"v2:"`` + sha256 over per-row sha256s, computable while a file streams and independent of its line order); the
same predictions scored again are a repeat and not counted. Format-1 digests (bare hex, written before) never equal
a format-2 one: a re-submission of predictions first scored then counts once more, never less. The gate refuses a predictor whose count has reached the configured
``max_submissions``. The ledger is append-only, locked with ``fcntl`` while counted and written, and each line is
fsynced; a last line torn by a kill (no newline, not JSON) is skipped by readers and cut off before the next append.

Released numbers follow the Ladder of Blum & Hardt ("The Ladder: A Reliable Leaderboard for Machine Learning
Competitions", ICML 2015): a new sealed score (lower is better) is released only when it beats the best released so far
by more than the step ``eta``, and then rounded to the ``eta`` grid; otherwise the previous release is repeated. So each
submission reveals at most "improved by more than eta, and roughly by how much", not the low digits an adaptive analyst
would need to fit the sealed truth. Confidence bounds are released rounded outward to the grid (never tighter).

Left out: protection across machines (the ledger is a local file) and against renaming a predictor; the ledger
records, it does not authenticate.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.io import loads_json
from tasks.paths import data_dir

DEFAULT_STEP = {"kl_nats": 0.05, "kl_bits": 0.05, "reverse_kl_nats": 0.05, "ce_realized_nats": 0.05,
                "js_bits": 0.01, "tv": 0.01, "brier": 0.01, "top1": 0.01, "top10_overlap": 0.01,
                # trajectory suites (evals.trajectory_scoring, evals.stepwise): orders of magnitude and nats on a
                # 0.05 grid, the share within 10x like a rate; calibration fit on 0.05
                "mean_abs_log10_error": 0.05, "mean_log10_error": 0.05, "mean_abs_nats_per_token": 0.05,
                "within_10x_share": 0.01, "calibration_slope": 0.05, "calibration_intercept": 0.05,
                "trajectory_kl": 0.05, "ce_sampled_nats": 0.05}


class HoldoutError(RuntimeError):
    """A predictor has used up its sealed submissions for a suite."""


def default_limit() -> int:
    """Sealed scorings allowed per predictor and suite outside the gate: ``$LOGITPRED_SEALED_LIMIT``, default 20."""
    return int(os.environ.get("LOGITPRED_SEALED_LIMIT", "20"))


def ledger_path() -> Path:
    """``$LOGITPRED_LEDGER`` if set (e.g. a location predictors cannot write), else under the data dir."""
    env = os.environ.get("LOGITPRED_LEDGER")
    return Path(env).resolve() if env else data_dir() / "holdout" / "submissions.jsonl"


def _mine(rows: Iterable[dict[str, Any]], suite: Any, predictor: str) -> list[dict[str, Any]]:
    """The ledger rows that are submissions of ``predictor`` on the sealed prompts of ``suite``.

    A row of the older format (``commitment`` only) is placed by its commitment: on the prompts that a newer row with
    the same commitment names, else on this suite's prompts if it is the suite's current commitment.
    """
    rows = [r for r in rows if r.get("suite") == suite.name]
    known = {r["commitment"]: r["prompts"] for r in rows if r.get("prompts") and r.get("commitment")}
    current, mine = suite.commitment, suite.sealed_prompts_sha256

    def prompts(r: dict[str, Any]) -> str | None:
        if r.get("prompts"):
            return r["prompts"]
        c = r.get("commitment")
        return known.get(c) or (mine if c and c == current else None)

    return [r for r in rows if r.get("predictor") == predictor and prompts(r) == mine]


def record(suite: Any, predictor: str, *, run_id: str | None = None, via: str = "score",
           digest: str | None = None) -> int:
    """Append one sealed submission of ``predictor`` on ``suite``; return its count including this one.

    ``suite`` needs ``name``, ``sealed_prompts_sha256`` and ``commitment``. ``digest`` identifies the predictions
    scored (``predictors.digest``: ``predictions_digest`` / ``SubmissionDigest`` for next-token rows,
    ``answers_digest`` for whole continuations; compared as strings, so digests of another format never match).
    Scoring exactly the same predictions again reveals nothing new about the holdout, so such a repeat (``make run``
    twice, or ``run`` then ``predict`` + ``score``) is not counted again. Raises ``HoldoutError`` if a line
    other than a torn last one is corrupted.
    """
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"time": datetime.now(UTC).isoformat(), "suite": suite.name, "prompts": suite.sealed_prompts_sha256,
            "commitment": suite.commitment or "", "predictor": predictor, "run_id": run_id, "via": via,
            "digest": digest}
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # count and append as one step
        try:
            f.seek(0)
            data = f.read()
            mine = _mine(_rows(data.decode("utf-8", errors="replace").splitlines(keepends=True)), suite, predictor)
            repeat = digest is not None and any(row.get("digest") == digest for row in mine)
            if not repeat:
                if data and not data.endswith(b"\n"):  # a line torn by a kill: cut it off, it was never counted
                    f.truncate(data.rfind(b"\n") + 1)
                f.seek(0, os.SEEK_END)
                f.write((json.dumps(line) + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return len(mine) + (0 if repeat else 1)


def count(suite: Any, predictor: str) -> int:
    """Sealed submissions recorded so far for ``predictor`` on the suite's sealed prompts (see the module notes)."""
    path = ledger_path()
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        return len(_mine(_rows(f.read().splitlines(keepends=True)), suite, predictor))


def check(suite: Any, predictor: str, limit: int | None) -> int:
    """Raise ``HoldoutError`` if ``predictor`` has reached ``limit`` sealed submissions; return the count so far."""
    n = count(suite, predictor)
    if limit is not None and n >= limit:
        raise HoldoutError(
            f"predictor {predictor!r} has been scored {n} time(s) on the sealed split of suite {suite.name!r} "
            f"(limit {limit}): further sealed scores would leak the holdout. Work on the practice split, or build a "
            f"fresh suite (new seed) for a new holdout; the ledger is {ledger_path()}"
        )
    return n


def _rows(lines: list[str]) -> Iterable[dict[str, Any]]:
    """The ledger's rows; a last line without its newline that does not parse (torn by a kill) is skipped."""
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = loads_json(line)
            except ValueError as e:  # malformed JSON, or a key given twice
                if n == len(lines) and not line.endswith("\n"):
                    return  # torn by a kill while being appended: that submission was never recorded
                raise HoldoutError(f"holdout ledger {ledger_path()} line {n} is corrupted ({getattr(e, 'msg', e)}): the count of sealed "
                                   "submissions cannot be trusted; restore the file from a backup") from e
            if not isinstance(row, dict):
                raise HoldoutError(f"holdout ledger {ledger_path()} line {n} is not a JSON object: the count of sealed "
                                   "submissions cannot be trusted; restore the file from a backup")
            yield row


# --- coarse release ---------------------------------------------------------------------------------------------------
def coarse(x: float, step: float, direction: str = "nearest") -> float:
    """``x`` on the grid of multiples of ``step``: nearest, or rounded ``up``/``down`` (for conservative bounds)."""
    if step <= 0:
        raise ValueError(f"release step must be > 0, got {step}")
    if not math.isfinite(x):
        return x
    fn = {"nearest": round, "up": math.ceil, "down": math.floor}[direction]
    # the 1e-9 guards against 0.15 / 0.05 = 2.9999999999999996 flooring a value already on the grid
    nudge = {"nearest": 0.0, "up": -1e-9, "down": 1e-9}[direction]
    return round(fn(x / step + nudge) * step, 10)


def ladder(values: Iterable[float], step: float) -> list[float]:
    """Blum & Hardt's Ladder over a sequence of scores (lower is better): what is released after each submission."""
    released: list[float] = []
    best = math.inf
    for v in values:
        if v < best - step:
            best = coarse(v, step)
        released.append(best)
    return released


def release_interval(estimate: float, low: float, high: float, step: float) -> tuple[float, float, float]:
    """(estimate, low, high) on the grid: estimate to the nearest step, the bounds rounded outward."""
    return coarse(estimate, step), coarse(low, step, "down"), coarse(high, step, "up")


def step_for(metric: str, steps: dict[str, float] | None = None) -> float:
    """The release step of a metric: configured, else the default (0.05 nats for KL-like metrics, 0.01 for rates;
    trajectory metrics: 0.05 orders of magnitude for log10 errors, 0.05 nats for the trajectory KL)."""
    table = {**DEFAULT_STEP, **(steps or {})}
    return table.get(metric, 0.01)
