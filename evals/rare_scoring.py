"""Scoring predictions of rare-behaviour questions against the exact reference set (``logitpred rare score``).

Questions and truth come from ``tasks.rare.questions`` (temperature 1: "P_D(B)?" per distribution and behaviour,
"P(B | x)?" per input). A predictions file uses the whole-continuation format (``predictors.trajectory_format``;
``prompt_id`` = distribution or ``<distribution>/x<i>``, ``continuation_id`` = behaviour), validated line by line;
it is scored in log space by ``evals.trajectory_metrics`` (error of log P in nats and log10, mean absolute log10
error, share within 10x, calibration; bootstrap CIs), separately for the aggregate and the per-input questions, and
recorded as a run (``questions``: ``rare``; one row per question; the reference commitment and spec hash).
Exact truth only: a question whose true probability is 0 (possible for an indicator, never at temperature 1 with a
softmax) could not be scored in log space; the reference set has none.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.paths import sha256_file

from . import records
from .scoring import Score, ScoringError, with_approval
from .trajectory_metrics import aggregate, log_errors

QUESTION_KIND = "rare"


def known_questions(record: dict[str, Any]) -> dict[tuple[str, str], int]:
    """``{(prompt_id, continuation_id): 1}`` of every question of a reference record (the format's step count is
    unused here)."""
    from tasks.rare.questions import truth

    return dict.fromkeys(truth(record), 1)


def score_rare(record: dict[str, Any], accepted: list[Any], errors: list[str], *, predictor: dict[str, Any],
               seed: int = 0, write: bool = True, results_root: Path | None = None,
               source: Path | None = None) -> Score:
    """Score validated predictions (``TrajectoryPrediction``) of a reference record's questions (module doc).
    Raises ``ScoringError`` when nothing valid is left."""
    from predictors.trajectory_format import missing
    from tasks.rare.questions import truth

    if not accepted:
        raise ScoringError("no valid prediction to score" + (f": {errors[0]}" if errors else ""))
    predictor = with_approval(predictor)
    exact = truth(record)
    true_p = np.array([exact[(a.prompt_id, a.continuation_id)] for a in accepted], dtype=np.float64)
    if (true_p <= 0).any():
        raise ScoringError("a question's exact probability is 0: it cannot be scored in log space")
    true_lp = np.log(true_p)
    pred_lp = np.array([a.logprob for a in accepted], dtype=np.float64)
    kind = np.array(["P(B|x)" if "/x" in a.prompt_id else "P_D(B)" for a in accepted])
    ones = np.ones(len(accepted), dtype=np.int64)
    per = pd.DataFrame({"prompt_id": [a.prompt_id for a in accepted],
                        "continuation_id": [a.continuation_id for a in accepted], "question": kind,
                        "true_logprob": true_lp, "pred_logprob": pred_lp, **log_errors(true_lp, pred_lp, ones)})
    metrics = {}
    for k in ("P_D(B)", "P(B|x)"):
        sel = kind == k
        if sel.sum() >= 3:
            metrics[k] = aggregate(true_lp[sel], pred_lp[sel], ones[sel], seed=seed)
    absent = missing(exact, accepted)
    digest = hashlib.sha256(json.dumps([[a.prompt_id, a.continuation_id, a.logprob] for a in accepted]).encode())
    summary = {
        "run_id": records.new_run_id("rare", "reference", predictor["name"]), "created": datetime.now(UTC).isoformat(),
        "command": records.command_line(), "questions": QUESTION_KIND,
        "reference": {"commitment": record["commitment"], "spec_sha256": record["spec_sha256"]},
        "target": record["target"], "predictor": predictor,
        "predictions_file": {"path": str(source), "sha256": sha256_file(source)} if source else None,
        "predictions_sha256": digest.hexdigest(), "n_questions": len(exact), "n_scored": len(accepted),
        "n_rejected": len(errors), "missing": [list(q) for q in absent[:100]], "errors": errors[:100], "seed": seed,
        "environment": records.environment(), "metrics": metrics,
    }
    run_dir = records.write_run(summary, per, root=results_root) if write else None
    return Score(per, summary, errors, run_dir)


def score_rare_file(record: dict[str, Any], path: Path, *, predictor: dict[str, Any], seed: int = 0,
                    write: bool = True, results_root: Path | None = None) -> Score:
    """Validate a predictions file line by line against the record's questions, then ``score_rare``."""
    from predictors.trajectory_format import validate_file

    if not Path(path).is_file():
        raise ScoringError(f"predictions file {path} does not exist")
    accepted, rejected = validate_file(Path(path), known_questions(record))
    return score_rare(record, list(accepted), [str(r) for r in rejected], predictor=predictor, seed=seed,
                      write=write, results_root=results_root, source=Path(path))
