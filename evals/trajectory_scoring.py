"""Scoring whole-continuation predictions of a trajectory suite: validate, score, record (``logitpred score``).

The questions of a split are its shown continuations (``tasks.trajectory.questions``: realized and given; sampled
continuations are never asked whole). A predictions file is validated line by line
(``predictors.trajectory_format.validate_file``), scored against the chain-rule truth (``tasks.trajectory``) by the
metrics of ``evals.trajectory_metrics`` (per question: signed and absolute error of log P in nats and log10, per
token; aggregates with bootstrap CIs, overall and per kind), and recorded as a run like next-token scoring
(``results/<run-id>/``: ``per_prompt.csv`` with one row per question, ``summary.json``, and on practice
``calibration.png``; a sealed record keeps errors but no truth value on its own, and no plot). Predictions made
in-process (``logitpred run``) go through ``score_trajectory_predictions``: validated as a file's lines are, then the
same scoring and record. The
approval rule, the sealed commitment check and holdout hygiene are those of ``evals.scoring``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from predictors.digest import answers_digest
from tasks.paths import sha256_file

from . import records
from .scoring import Score, ScoringError, with_approval
from .trajectory_metrics import aggregate, calibration_plot, log_errors

if TYPE_CHECKING:
    from predictors.trajectory_format import TrajectoryPrediction

QUESTION_KIND = "trajectory"  # ``summary["questions"]`` of a trajectory run (next-token runs have none)


def known_questions(suite: Any, split: str) -> dict[tuple[str, str], int]:
    """``{(prompt_id, continuation_id): number of tokens}`` of every whole-continuation question of ``split``."""
    from tasks.trajectory import questions

    return {(q["prompt_id"], q["continuation_id"]): len(q["token_ids"])
            for q in questions(suite, split) if "continuation_id" in q}


def score_trajectory_file(suite: Any, split: str, path: Path, *, predictor: dict[str, Any], strict: bool = False,
                          seed: int = 0, write: bool = True, results_root: Path | None = None) -> Score:
    """Validate and score a whole-continuation predictions file of ``split``; write the run record unless
    ``write=False``. Returns ``Score`` (``per_prompt``: one row per scored question; ``errors``: rejected lines).

    Raises ``ScoringError`` when nothing valid is left to score, or in ``strict`` mode for any rejected line or
    missing question; ``SuiteError`` when the suite has no trajectory truth or fails its commitment (sealed);
    ``HoldoutError`` past the sealed limit."""
    from predictors.trajectory_format import validate_file

    if not Path(path).is_file():
        raise ScoringError(f"predictions file {path} does not exist")
    known = known_questions(suite, split)
    accepted, rejected = validate_file(path, known)
    return _score(suite, split, known, accepted, [str(r) for r in rejected], predictor=predictor, strict=strict,
                  seed=seed, write=write, results_root=results_root, source=Path(path))


def score_trajectory_predictions(suite: Any, split: str, predictions: Iterable[TrajectoryPrediction], *,
                                 predictor: dict[str, Any], strict: bool = False, seed: int = 0, write: bool = True,
                                 results_root: Path | None = None) -> Score:
    """``score_trajectory_file`` for predictions made in-process (``logitpred run``): each is validated as a file's
    line would be (``predictors.trajectory_format.parse_line``: ids, values, steps; a second prediction of a question
    is rejected) and rejected ones are named as ``prediction <n>`` (1-based); then the same scoring and record, with
    ``predictions_file`` null. Raises what ``score_trajectory_file`` raises."""
    from predictors.trajectory_format import TrajectoryError, parse_line

    known = known_questions(suite, split)
    prompts = {pid for pid, _ in known}
    accepted, errors, first = [], [], {}
    for n, pred in enumerate(predictions, 1):
        try:
            checked = parse_line(pred.to_json(), known, prompts=prompts)
            ids = (checked.prompt_id, checked.continuation_id)
            if ids in first:
                raise TrajectoryError(f"duplicate question: already given as prediction {first[ids]}",
                                      "continuation_id", ids)
            first[ids] = n
            accepted.append(checked)
        except TrajectoryError as e:
            errors.append(f"prediction {n}: {e}")
    return _score(suite, split, known, accepted, errors, predictor=predictor, strict=strict, seed=seed, write=write,
                  results_root=results_root, source=None)


def _score(suite: Any, split: str, known: dict[tuple[str, str], int], accepted: list[TrajectoryPrediction],
           errors: list[str], *, predictor: dict[str, Any], strict: bool, seed: int, write: bool,
           results_root: Path | None, source: Path | None) -> Score:
    """Score validated predictions and write the run record (the one scoring path of both entries above)."""
    from predictors.trajectory_format import missing
    from tasks.trajectory import load_trajectories

    predictor = with_approval(predictor)
    absent = missing(known, accepted)
    if strict and (errors or absent):
        raise ScoringError(f"strict mode: {len(errors)} rejected line(s), {len(absent)} question(s) without a "
                           "prediction; nothing scored")
    if not accepted:
        raise ScoringError("no valid prediction to score" + (f": {errors[0]}" if errors else ""))
    label = predictor.get("label") or predictor["name"]
    if split == "sealed":
        suite.verify_commitment()  # covers the trajectory commitment too
        from .holdout import check, default_limit

        check(suite, label, default_limit())
    truth = load_trajectories(suite).split(split)
    rows = [truth.index(a.continuation_id) for a in accepted]
    kinds = [truth.continuations[i].kind for i in rows]
    true_lp = np.asarray(truth.logprob, dtype=np.float64)[rows]
    pred_lp = np.array([a.logprob for a in accepted], dtype=np.float64)
    n_tok = np.asarray(truth.lengths, dtype=np.int64)[rows]
    err = log_errors(true_lp, pred_lp, n_tok)
    per = pd.DataFrame({"prompt_id": [a.prompt_id for a in accepted],
                        "continuation_id": [a.continuation_id for a in accepted], "kind": kinds,
                        "n_tokens": n_tok, "true_logprob": true_lp, "pred_logprob": pred_lp, **err})
    metrics = {"all": aggregate(true_lp, pred_lp, n_tok, seed=seed)}
    for kind in sorted(set(kinds)):
        sel = np.array([k == kind for k in kinds])
        if sel.sum() >= 3:  # a calibration fit needs a few points
            metrics[kind] = aggregate(true_lp[sel], pred_lp[sel], n_tok[sel], seed=seed)
    digest = answers_digest(accepted)  # the holdout ledger's identity of these answers, whatever their order
    summary: dict[str, Any] = {
        "run_id": records.new_run_id(suite.name, split, predictor["name"]),
        "created": datetime.now(UTC).isoformat(), "command": records.command_line(), "questions": QUESTION_KIND,
        "suite": {"name": suite.name, "version": suite.version, "commitment": suite.commitment,
                  "trajectory_commitment": load_trajectories(suite).commitment,
                  "sealed_prompts_sha256": suite.sealed_prompts_sha256, "config": suite.manifest["config"]},
        "split": split, "target": suite.target, "predictor": predictor,
        "predictions_file": {"path": str(source), "sha256": sha256_file(source)} if source else None,
        "n_questions": len(known), "n_scored": len(accepted), "n_rejected": len(errors),
        "missing": [list(q) for q in absent[:100]], "errors": errors[:100], "seed": seed,
        "environment": records.environment(), "metrics": metrics,
    }
    if split == "sealed":
        from .holdout import record

        summary["holdout"] = {"submission": record(suite, label, run_id=summary["run_id"], digest=digest),
                              "predictions_sha256": digest}
    run_dir = None
    if split == "sealed":  # the record keeps errors, never a sealed truth value on its own (nor its plot)
        per = per.drop(columns=["true_logprob"])
    if write:
        run_dir = records.write_run(summary, per, root=results_root)
        if split != "sealed" and len(per) >= 2 and np.ptp(per["pred_logprob"]) > 0:
            calibration_plot(per["pred_logprob"].to_numpy() / np.log(10), per["true_logprob"].to_numpy() / np.log(10),
                             run_dir / "calibration.png", title=f"{label} on {suite.name}/{split}")
    return Score(per, summary, errors, run_dir)
