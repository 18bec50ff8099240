"""Step-wise questions along the target's samples: release, score and commit one round at a time; trajectory KL.

Round t asks the step questions of step t (``tasks.trajectory.steps``: ``x + y_<t`` for every sample reaching step
t) in the next-token prediction format (``predictors.format``; ids the harness assigns). A round is

1. released (``release``: the questions' lines) only when round t-1 of the label's current attempt is committed
   (``evals.rounds``);
2. answered: from a file (``score_round_file``, ``logitpred score FILE --round t``) or in-process
   (``run_stepwise``: the predictor receives the released ``PromptView``s of one round at a time, and round t+1 is
   built only after round t is committed, so it cannot read ahead or revise);
3. validated at the boundary like any next-token file, and refused whole (nothing committed, fix and resubmit) when a
   question is missing or a line rejected: the next round would reveal the tokens the missing answer is about;
4. scored against the stored full distribution of every sample reaching step t (``evals.sparse.score_rows``: KL
   divergence and the other next-token metrics; ``ce_sampled_nats`` is the cross-entropy on the token the sample
   drew), committed to the rounds ledger with its per-sample KL, and recorded as a run (``questions``:
   ``trajectory-steps``; one row per (sample, step)).

When the last round is committed, the **trajectory KL** is reported: per sample the sum over its steps of the
next-token KL, an unbiased Monte Carlo estimate of ``KL(P(y_1..y_m | x) || Q(y_1..y_m | x))`` (chain rule of KL,
``evals.trajectory_metrics``), with bootstrap CIs, per step and summed (``metrics["trajectory_kl"]``). On sealed,
round 1 of each attempt is one sealed submission (``evals.holdout``), the commitment is verified before scoring, and
the record holds errors, never a sealed truth value on its own (no ``target_*`` column).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictors.base import PromptView
from predictors.jsonl import validate, validate_file
from predictors.rows import ValidatedPredictions
from tasks.paths import sha256_file

from . import records, rounds
from .scoring import K, Score, ScoringError, with_approval
from .stats import summarize
from .trajectory_metrics import TrajectoryKL, summarize_trajectory_kl

QUESTION_KIND = "trajectory-steps"  # ``summary["questions"]`` of a step-wise run
RENAME = {"ce_realized_nats": "ce_sampled_nats", "target_ce_realized_nats": "target_ce_sampled_nats"}


def _plan(suite: Any, split: str) -> Any:
    from tasks.trajectory.steps import step_plan

    return step_plan(suite, split)


def label_of(predictor: dict[str, Any]) -> str:
    return predictor.get("label") or predictor["name"]


def release(suite: Any, split: str, t: int, label: str, *, plan: Any = None) -> list[dict[str, Any]]:
    """The lines of round ``t``'s questions (``StepQuestion.line``) for ``label``. Raises ``RoundError`` when round
    t-1 of the label is not committed, ``SuiteError`` for a step outside the split or a suite without samples."""
    plan = plan or _plan(suite, split)
    plan.questions(t)  # a step outside 1 .. rounds: SuiteError first
    rounds.check_release(suite.name, split, plan.commitment, label, t)
    return [q.line() for q in plan.questions(t)]


def score_round_file(suite: Any, split: str, t: int, path: Path, *, predictor: dict[str, Any], seed: int = 0,
                     write: bool = True, results_root: Path | None = None) -> Score:
    """Validate a next-token predictions file for round ``t`` (ids: that round's step question ids) and score it
    (``score_round``). Raises ``ScoringError`` for a missing file, a rejected line or a missing question (nothing is
    committed), ``RoundError`` for a round out of order, and what ``score_round`` raises."""
    if not Path(path).is_file():
        raise ScoringError(f"predictions file {path} does not exist")
    plan = _plan(suite, split)
    preds = validate_file(path, [q.id for q in plan.questions(t)], suite.vocabulary, suite.background)
    return score_round(suite, split, t, preds, predictor=predictor, seed=seed, write=write,
                       results_root=results_root, source=Path(path), plan=plan)


def _precheck(suite: Any, split: str, t: int, label: str, plan: Any) -> None:
    """Refuse early (``RoundError``) a round that cannot be committed: out of order, or already committed."""
    rounds.check_release(suite.name, split, plan.commitment, label, t)
    st = rounds.state(suite.name, split, plan.commitment, label)
    if t > 1 and st and str(t) in st["rounds"]:
        raise rounds.RoundError(f"round {t} of {label!r} on {suite.name}/{split} is already scored: a committed "
                                "round cannot be revised (start a new attempt with round 1)")


def _round_rows(suite: Any, split: str, t: int, preds: ValidatedPredictions, plan: Any, label: str
                ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per (sample, step t) metrics of complete, validated predictions; and the per-sample KL to commit."""
    from tasks.truth_stats import compute_stats

    from .sparse import score_rows

    qs = plan.questions(t)
    have = set(preds.prompt_ids)
    missing = [q.id for q in qs if q.id not in have]
    if preds.errors or missing:
        shown = "; ".join(preds.errors[:3] + [f"no prediction for {m}" for m in missing[:3]])
        raise ScoringError(f"round {t} of {label!r}: {len(preds.errors)} rejected line(s), {len(missing)} question(s) "
                           f"without a prediction ({shown}); a round is scored whole, since the next round shows "
                           "the tokens these answers are about: fix them and score the round again")
    truth = plan.truth(t)
    at = {p: i for i, p in enumerate(preds.prompt_ids)}
    rows = preds.rows.take(np.array([at[qs[j].id] for j in truth.question], dtype=np.int64))
    stats = compute_stats(truth.logp, suite.background, ks=sorted({1, K}))
    got = score_rows(rows, truth.logp, truth.sampled, stats, k=K)
    sample_ids = [plan.truth_split.continuations[int(i)].id for i in truth.samples]
    per = pd.DataFrame({"step_prompt_id": [qs[j].id for j in truth.question], "continuation_id": sample_ids,
                        "prompt_id": [qs[j].prompt_id for j in truth.question], "step": t,
                        **{RENAME.get(c, c): v for c, v in got.items()}})
    if split == "sealed":  # functions of the sealed truth alone stay out of the record
        per = per.drop(columns=[c for c in per.columns if c.startswith("target_")])
    return per, dict(zip(sample_ids, per["kl_nats"].astype(float), strict=True))


def score_round(suite: Any, split: str, t: int, preds: ValidatedPredictions, *, predictor: dict[str, Any],
                seed: int = 0, write: bool = True, results_root: Path | None = None, source: Path | None = None,
                plan: Any = None) -> Score:
    """Score and commit round ``t`` (module doc) of validated predictions whose ids are the round's step questions;
    write its run record unless ``write=False``. The summary holds ``round``, ``rounds``, ``attempt``, next-token
    ``metrics`` over the round's (sample, step) rows and, when this is the last round, ``metrics["trajectory_kl"]``.
    Raises ``ScoringError`` (incomplete round), ``RoundError`` (order), ``SuiteError`` (sealed commitment),
    ``HoldoutError`` (sealed limit, at round 1)."""
    plan = plan or _plan(suite, split)
    predictor = with_approval(predictor)
    label = label_of(predictor)
    _precheck(suite, split, t, label, plan)
    per, kl = _round_rows(suite, split, t, preds, plan, label)
    run_id = records.new_run_id(suite.name, split, predictor["name"])
    digest = preds.digest()
    summary = _summary(suite, split, predictor, run_id, seed, source, plan, t)
    if split == "sealed":
        suite.verify_commitment()
        if t == 1:  # one sealed submission per attempt
            from .holdout import check, default_limit, record

            check(suite, label, default_limit())
            summary["holdout"] = {"submission": record(suite, label, run_id=run_id, via="stepwise", digest=digest),
                                  "predictions_sha256": digest}
    entry = rounds.commit(suite.name, split, plan.commitment, label, t, run_id=run_id, digest=digest, kl=kl)
    summary["attempt"] = entry["attempt"]
    summary["n_scored"] = len(per)
    summary["metrics"] = summarize({c: per[c].to_numpy() for c in per.columns if per[c].dtype.kind == "f"}, seed=seed)
    if t == plan.rounds:
        summary["metrics"]["trajectory_kl"] = trajectory_kl_of(plan, entry, seed=seed)
        rounds.mark_complete(suite.name, split, plan.commitment, label)
    run_dir = records.write_run(summary, per, root=results_root) if write else None
    return Score(per, summary, [], run_dir)


def trajectory_kl_of(plan: Any, entry: dict[str, Any], *, seed: int = 0) -> dict[str, list]:
    """``summarize_trajectory_kl`` of the per-sample, per-step KL committed in ``entry`` (a rounds-ledger attempt
    holding every round of ``plan``): samples that ended count 0 after their end."""
    ids, lengths = plan.sample_ids(), plan.lengths()
    per_step = np.zeros((len(ids), plan.rounds))
    for t in range(1, plan.rounds + 1):
        kl = entry["rounds"][str(t)]["kl"]
        for i, sid in enumerate(ids):
            if lengths[i] >= t:
                per_step[i, t - 1] = kl[sid]
    mask = np.arange(plan.rounds) < lengths[:, None]
    return summarize_trajectory_kl(TrajectoryKL(per_step, per_step.sum(axis=1), mask), seed=seed)


def _summary(suite: Any, split: str, predictor: dict[str, Any], run_id: str, seed: int, source: Path | None,
             plan: Any, t: int | str) -> dict[str, Any]:
    return {
        "run_id": run_id, "created": datetime.now(UTC).isoformat(), "command": records.command_line(),
        "questions": QUESTION_KIND, "round": t, "rounds": plan.rounds,
        "suite": {"name": suite.name, "version": suite.version, "commitment": suite.commitment,
                  "trajectory_commitment": plan.commitment, "sealed_prompts_sha256": suite.sealed_prompts_sha256,
                  "config": suite.manifest["config"]},
        "split": split, "target": suite.target, "predictor": predictor,
        "predictions_file": {"path": str(source), "sha256": sha256_file(source)} if source else None,
        "n_samples": len(plan.samples), "seed": seed, "environment": records.environment(),
    }


def ask_round(predictor: Any, views: list[PromptView], *, batch_size: int = 64,
              on_progress: Callable[[int], None] | None = None) -> list[Any]:
    """``predictor.predict`` over one round's views in batches (it receives nothing else). Raises ``ScoringError``
    when it returns another number of predictions than it was asked for."""
    out: list[Any] = []
    for b in range(0, len(views), batch_size):
        batch = views[b : b + batch_size]
        got = predictor.predict(batch)
        if len(got) != len(batch):
            raise ScoringError(f"predictor {getattr(predictor, 'name', predictor)!r} returned {len(got)} predictions "
                               f"for {len(batch)} step prompts")
        out.extend(got)
        if on_progress:
            on_progress(len(batch))
    return out


def run_stepwise(suite: Any, split: str, predictor: Any, ctx: Any, *, predictor_meta: dict[str, Any], seed: int = 0,
                 write: bool = True, results_root: Path | None = None, batch_size: int = 64,
                 on_progress: Callable[[int], None] | None = None) -> Score:
    """Every round of ``split``, in order, with an in-process ``predictor`` (module doc): release round t, ask it,
    validate, score and commit, then round t+1. Writes one run record for the whole attempt (``round``: ``all``;
    one row per (sample, step); ``metrics["trajectory_kl"]``). ``ctx`` is the suite's ``PredictorContext`` (unused
    beyond what the predictor was built with; kept for a uniform signature). ``on_progress(n)`` advances by step
    questions answered. Raises what ``score_round`` raises."""
    plan = _plan(suite, split)
    meta = with_approval(predictor_meta)
    parts, last, holdout = [], None, None
    for t in range(1, plan.rounds + 1):
        views = [PromptView(q["prompt_id"], q["text"], tuple(q["token_ids"]))
                 for q in release(suite, split, t, label_of(meta), plan=plan)]
        got = ask_round(predictor, views, batch_size=batch_size, on_progress=on_progress)
        preds = validate([(None, p) for p in got], [v.id for v in views], suite.vocabulary, suite.background)
        last = score_round(suite, split, t, preds, predictor=meta, seed=seed, write=False, plan=plan)
        parts.append(last.per_prompt)
        holdout = holdout or last.summary.get("holdout")
    per = pd.concat(parts, ignore_index=True)
    summary = {**last.summary, "round": "all", "n_scored": len(per),
               "metrics": {**summarize({c: per[c].to_numpy() for c in per.columns if per[c].dtype.kind == "f"},
                                       seed=seed), "trajectory_kl": last.summary["metrics"]["trajectory_kl"]}}
    if holdout:
        summary["holdout"] = holdout  # round 1's: the attempt's one sealed submission
    run_dir = records.write_run(summary, per, root=results_root) if write else None
    return Score(per, summary, [], run_dir)
