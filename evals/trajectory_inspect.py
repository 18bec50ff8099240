"""Every trajectory suite split as an inspect-ai Task: ``inspect eval evals/trajectory_inspect.py -T suite=NAME
-T split=sealed --model predictor/unigram`` (the same ``predictor/NAME`` provider as next-token suites).

One sample per whole-continuation question of the split (``predictors.chain.split_questions``: realized and given
continuations; a sampled continuation is never shown whole): a system message naming the suite, the prompt text as
the user message and the continuation as an assistant message; the sample's id is the continuation id and its target
is empty. The provider (``evals.inspect_provider``) answers log P(continuation | prompt) in nats.

Scoring is the trajectory scoring of ``logitpred score``/``run`` (``evals.trajectory_scoring``): each answer is
validated as a predictions file's line is (``predictors.trajectory_format.parse_line``) and compared with the
chain-rule truth (``evals.trajectory_metrics.log_errors``); the ``trajectory_aggregate`` metric is
``evals.trajectory_metrics.aggregate`` over every scored question in the split's question order, so its numbers are
those of ``score_trajectory_predictions`` on the same answers (mean absolute log10 error, share within 10x, mean
signed log10 error, mean absolute nats per token, calibration slope and intercept, each with its 95% CI as
``<name>``, ``<name>_ci_low``, ``<name>_ci_high``). The errors of each question are kept in this process (a handle in
the score's metadata) until the metric reads them.

Sealed splits: the commitment (covering the trajectories) is verified when the task is built, the first sample
counts one submission per model in the holdout ledger (``evals.predictability.holdout_guard``; ``-T
max_submissions=N``, default ``$LOGITPRED_SEALED_LIMIT``), the per-sample score holds no error (the log holds the
predictor's own answer, so an error beside it would give the sealed truth away) and the aggregates are released on
the holdout grid (``evals.holdout``). Approval is the provider's, marked as for next-token tasks (``approved``).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import TaskState, generate

from evals import holdout
from evals.inspect_provider import system_message
from evals.predictability import approval_marker, approved, holdout_guard
from tasks import load_suite

_ERRORS: dict[str, tuple[int, float, float, int, bool]] = {}  # handle -> (question position, true, pred, m, sealed)
METRICS = ("mean_abs_log10_error", "within_10x_share", "mean_log10_error", "mean_abs_nats_per_token",
           "calibration_slope", "calibration_intercept")


@metric
def trajectory_aggregate() -> Metric:
    """``evals.trajectory_metrics.aggregate`` (seed 0) over the scored questions, in question order; sealed: on the
    holdout grid (estimate to the nearest step, bounds outward)."""
    from evals.trajectory_metrics import aggregate

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        rows = sorted(_ERRORS[h] for s in scores if (h := (s.score.metadata or {}).get("handle")) in _ERRORS)
        if not rows:  # inspect probes every metric with an empty list
            return {}
        pos, true, pred, m, sealed = (np.array(c) for c in zip(*rows, strict=True))
        out = {}
        for name, triple in aggregate(true, pred, m.astype(np.int64), seed=0).items():
            if sealed.any():
                triple = holdout.release_interval(*triple, holdout.step_for(name))
            out.update({name: triple[0], f"{name}_ci_low": triple[1], f"{name}_ci_high": triple[2]})
        return out

    return compute


@scorer(metrics=[trajectory_aggregate()])
def trajectory_metrics(suite: str, split: str) -> Scorer:
    """Per question: the answer in the model output, validated, against the chain-rule truth (module doc)."""
    from evals.trajectory_metrics import log_errors
    from evals.trajectory_scoring import known_questions
    from predictors.trajectory_format import TrajectoryError, TrajectoryPrediction, parse_line
    from tasks.trajectory import load_trajectories

    s = load_suite(suite)
    if split == "sealed":
        s.verify_commitment()
    known = known_questions(s, split)
    order = {q: i for i, q in enumerate(known)}
    prompts = {pid for pid, _ in known}
    truth = load_trajectories(s).split(split)
    sealed = split == "sealed"

    async def score(state: TaskState, target: Target) -> Score:
        meta = (state.output.metadata or {}).get("logitpred") if state.output else None
        if not meta or meta.get("kind") != "trajectory":
            return Score.unscored(explanation="the output carries no logitpred trajectory answer: run with "
                                              "--model predictor/NAME")
        answer = TrajectoryPrediction(meta["prompt_id"], meta["continuation_id"], meta["logprob"],
                                      tuple(meta["steps"]) if meta.get("steps") is not None else None)
        try:
            checked = parse_line(answer.to_json(), known, prompts=prompts)
        except TrajectoryError as e:
            return Score.unscored(explanation=f"invalid answer: {e}")
        row = truth.index(checked.continuation_id)
        true, n = float(truth.logprob[row]), int(truth.lengths[row])
        handle = uuid.uuid4().hex
        _ERRORS[handle] = (order[(checked.prompt_id, checked.continuation_id)], true, checked.logprob, n, sealed)
        approval = meta.get("approval")
        metadata = {"handle": handle, **({"approval": approval} if approval else {})}
        explanation = None
        if approval and not approval.get("approved"):
            explanation = f"UNAPPROVED predictor, exploratory run: {approval.get('approval')}"
        if sealed:  # no per-question error beside the logged answer: it would give the sealed truth away
            return Score(value={"scored": 1.0}, answer=str(state.output.completion), explanation=explanation,
                         metadata=metadata)
        e = log_errors(np.array([true]), np.array([checked.logprob]), np.array([n]))
        value = {k: float(v[0]) for k, v in e.items()} | {"within_10x": float(e["abs_error_log10"][0] <= 1.0)}
        return Score(value=value, answer=str(state.output.completion), explanation=explanation, metadata=metadata)

    return score


def samples(suite: Any, split: str) -> list[Sample]:
    """One sample per whole-continuation question: system message naming the suite, the prompt text (user), the
    continuation (assistant), no target."""
    from predictors.chain import split_questions

    return [Sample(id=q.continuation_id,
                   input=[ChatMessageSystem(content=system_message(suite.name)), ChatMessageUser(content=q.prompt.text),
                          ChatMessageAssistant(content=q.text)],
                   target="", metadata={"prompt_id": q.prompt.id, "continuation_id": q.continuation_id,
                                        "kind": q.kind, "n_tokens": len(q.token_ids)})
            for q in split_questions(suite, split)]


@task
def trajectory_predictability(suite: str = "wiki", split: str = "practice", max_submissions: int | None = None) -> Task:
    """Predict the probability of every whole continuation asked on ``suite``/``split`` (a trajectory suite)."""
    from tasks.trajectory import load_trajectories

    s = load_suite(suite)
    if split == "sealed":
        s.verify_commitment()  # before anything is generated or scored
        if max_submissions is None:
            max_submissions = holdout.default_limit()
    return Task(
        dataset=MemoryDataset(samples(s, split), name=f"{s.name}-{split}-trajectories"),
        solver=[approval_marker(), holdout_guard(suite, split, max_submissions), generate()],
        scorer=[trajectory_metrics(suite, split), approved()],
        metadata={"suite": s.name, "suite_version": s.version, "split": split, "commitment": s.commitment,
                  "trajectory_commitment": load_trajectories(s).commitment, "target": s.target,
                  "questions": "trajectory"},
        version=1,
    )
