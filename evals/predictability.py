"""Every suite split as an inspect-ai Task: ``inspect eval evals/predictability.py -T suite=wiki -T split=sealed
--model predictor/unigram``.

One sample per prompt: a system message naming the suite (``logitpred suite=wiki``) and the prompt text as the user
message; the sample's ``target`` is empty. The truth is read only here, by the scorer, on the harness side: it never
enters a sample, a message or anything the model (a predictor behind ``evals.inspect_provider``) receives.

The scorer computes the foundation metrics (``evals.sparse.score_rows``, the same code as ``logitpred score``: a top +
rest prediction in O(named tokens) against the split's cached truth constants, a full vector on the dense kernels)
for each sample and returns them as a dict value; inspect aggregates every key with ``mean`` and ``stderr``, and
``ci95`` adds the percentile bootstrap interval of ``evals.stats``. Per-sample logs keep these per-prompt
scalars and the top-10 candidates of the prediction, never a distribution of the target or its realized token (on
sealed splits the two realized-token metrics are left out of the log too, see ``SEALED_OMIT``).
Sealed splits: the commitment is verified when the task is built, and the first sample records one submission per
model in the holdout ledger (``evals.holdout``) under the predictor's name, the label ``logitpred run``/``score`` use
(``predictor/ngram`` -> ``ngram``); ``-T max_submissions=N`` refuses a model past N.

Approval (``evals.inspect_provider``): an unapproved predictor is refused when the model is created, before any
sample (and so before any sealed submission is counted); with ``-M allow_unapproved=true`` it runs exploratory and the
log marks it three ways: each sample's ``metadata["approval"]`` (``approved``, ``exploratory``, ``approval`` reason,
``level``, ``approval_key``), each ``next_token_metrics`` score's ``metadata["approval"]`` and explanation, and the
``approved`` scorer (1 per sample predicted by an approved system, 0 otherwise; its mean is in the results).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, get_model
from inspect_ai.scorer import (
    Metric,
    SampleScore,
    Score,
    Scorer,
    Target,
    mean,
    metric,
    scorer,
    stderr,
)
from inspect_ai.solver import Generate, Solver, TaskState, generate, solver

from evals import holdout
from evals.inspect_provider import approval_of, model_label, system_message, take_prediction
from evals.sparse import score_rows
from evals.stats import bootstrap_ci
from predictors.format import PredictionError, check
from predictors.rows import PredictionRows
from tasks import load_suite
from tasks.truth_stats import truth_stats

# The target's log-probability of a sealed realized token is itself sealed truth (and with the logged top candidates
# the realized-token loss would name the token): sealed logs leave both out; ``logitpred score`` keeps them harness-side.
# target-side per-prompt values are functions of the sealed truth alone: never in a sealed log
SEALED_OMIT = ("ce_realized_nats", "target_ce_realized_nats", "target_entropy_nats")


@metric
def ci95() -> Metric:
    """95% percentile bootstrap interval of the mean over samples (``evals.stats.bootstrap_ci``, seed 0)."""

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        values = np.array([s.score.as_float() for s in scores], dtype=np.float64)
        if values.size == 0:  # inspect probes every metric with an empty list
            return {"low": float("nan"), "high": float("nan")}
        _, low, high = bootstrap_ci(values)
        return {"low": low, "high": high}

    return compute


@scorer(metrics={"*": [mean(), stderr(), ci95()]})
def next_token_metrics(suite: str, split: str) -> Scorer:
    """Per-prompt metrics of the prediction in the model output against the target's truth for the sample."""
    s = load_suite(suite)
    if split == "sealed":
        s.verify_commitment()
    ids, logp, nxt = s.truth_split(split)
    row = {pid: i for i, pid in enumerate(ids)}
    vocab, background = s.vocabulary, s.background
    stats = truth_stats(s, split)  # per-prompt truth constants, cached beside the truth: sparse predictions in O(named)

    async def score(state: TaskState, target: Target) -> Score:
        meta = (state.output.metadata or {}).get("logitpred") if state.output else None
        if not meta:
            return Score.unscored(explanation="the output carries no logitpred prediction: run with "
                                              "--model predictor/NAME")
        pred = take_prediction(meta["handle"])
        if pred is None:
            return Score.unscored(explanation="prediction not in this process (old log?): rerun the eval")
        try:
            checked = check(pred, vocab, background)  # validated as given: named tokens + rest, or a whole vector
        except PredictionError as e:
            return Score.unscored(explanation=f"invalid prediction: {e}")
        i = row[str(state.sample_id)]
        m = score_rows(PredictionRows.from_rows([checked], len(vocab), background), logp, nxt, stats,
                       truth_rows=np.array([i]))
        value = {k: float(v[0]) for k, v in m.items() if not (split == "sealed" and k in SEALED_OMIT)}
        top = meta.get("top") or [[""]]
        approval = meta.get("approval")
        explanation = None
        if approval and not approval.get("approved"):
            explanation = f"UNAPPROVED predictor, exploratory run: {approval.get('approval')}"
        return Score(value=value, answer=str(top[0][0]), explanation=explanation,
                     metadata={"approval": approval} if approval else None)

    return score


def _approval(state: TaskState) -> dict[str, Any] | None:
    """The approval metadata of the sample's prediction: from the output (set by the provider), else the sample's."""
    meta = (state.output.metadata or {}).get("logitpred") if state.output else None
    return (meta or {}).get("approval") or state.metadata.get("approval")


@scorer(metrics=[mean()])
def approved() -> Scorer:
    """1 if the sample was predicted by an approved (level-0 or recorded) system, 0 for an exploratory run of an
    unapproved one: the results' mean makes an eval of an unapproved predictor visible at a glance."""

    async def score(state: TaskState, target: Target) -> Score:
        approval = _approval(state)
        if not approval:
            return Score.unscored(explanation="the output carries no logitpred approval: run with "
                                              "--model predictor/NAME")
        ok = bool(approval.get("approved"))
        return Score(value=1.0 if ok else 0.0, answer="approved" if ok else "UNAPPROVED (exploratory)",
                     explanation=str(approval.get("approval")), metadata={"approval": approval})

    return score


@solver
def approval_marker() -> Solver:
    """Copy the predictor's approval metadata (``evals.inspect_provider``) into the sample's metadata, before it runs."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        approval = approval_of(get_model())
        if approval is not None:
            state.metadata["approval"] = approval
        return state

    return solve


@solver
def holdout_guard(suite: str, split: str, max_submissions: int | None = None) -> Solver:
    """On a sealed split, count one submission per model (on its first sample) and refuse past the limit."""
    seen: dict[str, int] = {}

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        if split != "sealed":
            return state
        label = model_label(str(state.model))
        if label not in seen:  # no await before the assignment: one count per model even with concurrent samples
            s = load_suite(suite)
            holdout.check(s, label, max_submissions)
            seen[label] = holdout.record(s, label, via="inspect")
        return state

    return solve


def samples(suite: Any, split: str) -> list[Sample]:
    """One sample per prompt: system message naming the suite, the prompt text as the user message, no target."""
    return [
        Sample(id=p.id, input=[ChatMessageSystem(content=system_message(suite.name)), ChatMessageUser(content=p.text)],
               target="", metadata={"context_tokens": len(p.token_ids), "doc": p.doc})
        for p in suite.prompts(split)
    ]


@task
def predictability(suite: str = "wiki", split: str = "practice", max_submissions: int | None = None) -> Task:
    """Predict the target's next-token distribution for every prompt of ``suite``/``split``."""
    s = load_suite(suite)
    if split == "sealed":
        s.verify_commitment()  # before anything is generated or scored
        if max_submissions is None:  # sealed runs are always limited (default $LOGITPRED_SEALED_LIMIT or 20)
            max_submissions = holdout.default_limit()
    return Task(
        dataset=MemoryDataset(samples(s, split), name=f"{s.name}-{split}"),
        solver=[approval_marker(), holdout_guard(suite, split, max_submissions), generate()],
        scorer=[next_token_metrics(suite, split), approved()],
        metadata={"suite": s.name, "suite_version": s.version, "split": split, "commitment": s.commitment,
                  "target": s.target},
        version=1,
    )
