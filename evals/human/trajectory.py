"""The human form's trajectory mode, suite side: the questions a trajectory suite asks, answers, practice feedback.

A trajectory suite (``tasks.trajectory.spec(suite) is not None``) asks whole-continuation questions: a prompt and one
continuation, ``realized`` (the document's own next tokens) or ``given`` (from the suite's behaviour file), exactly
as ``tasks.trajectory.questions`` lists them. ``sampled`` continuations are never shown (a sample of the target is
information about the target): nothing here holds their text or ids. The participant answers how likely the target
is to continue the prompt exactly so, as ``log10prob`` = log10 P(continuation | prompt) on the form's log scale,
``[LOG10_MIN, LOG10_MAX]`` (1 in 10^12 to 1 in 10).

Only the practice split's trajectory truth is ever loaded (``load_trajectories(suite).split("practice")``), and of
it only the log-probabilities and lengths of the shown questions are kept: the server has no sealed trajectory truth
in memory to leak. Practice feedback is computed by ``evals.trajectory_metrics.log_errors`` on the answer converted
exactly as ``predictors.trajectory_format`` converts ``log10prob`` (x ln 10), so the error shown equals the error
``logitpred score`` computes from the exported file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictors.trajectory_format import LN10
from tasks.suite import SPLITS

from ..trajectory_metrics import log_errors

LOG10_MIN, LOG10_MAX = -12.0, -1.0  # the form's scale: 1 in 10^12 .. 1 in 10
STEP = 0.1  # the slider's step (log10 units); the API accepts any value in range


def is_trajectory_suite(suite: Any) -> bool:
    """Whether ``suite`` asks whole-continuation questions (it has a trajectory section)."""
    from tasks.trajectory import spec

    return spec(suite) is not None


def one_in(log10p: float) -> str:
    """``log10 P`` as "1 in N": N to 2 significant digits, written out below a million (``-2.5`` -> ``"1 in 320"``),
    as ``"1 in 3.2 × 10^7"`` above (the page's ``oneIn`` writes it the same way)."""
    n = 10.0 ** -log10p
    if n < 1e6:
        return f"1 in {float(f'{n:.2g}'):,.0f}"
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"1 in {mantissa} × 10^{int(exponent)}"


@dataclass(frozen=True)
class Question:
    """One whole-continuation question as the form shows it."""

    prompt_id: str
    continuation_id: str
    kind: str  # "realized" or "given"
    prompt: str  # the prompt's text
    continuation: str  # the continuation's text
    n_tokens: int

    def public(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "continuation_id": self.continuation_id, "kind": self.kind,
                "prompt": self.prompt, "continuation": self.continuation, "n_tokens": self.n_tokens}


class TrajectoryGame:
    """The questions of each split in suite order and, with ``practice_truth`` (the server), the practice truth."""

    def __init__(self, suite: Any, *, practice_truth: bool = True) -> None:
        from tasks.trajectory import questions

        self.suite = suite
        self.questions: dict[str, list[Question]] = {}
        for split in SPLITS:
            text: dict[str, str] = {}
            qs = []
            for line in questions(suite, split):
                if "continuation_id" not in line:
                    text[line["prompt_id"]] = line["text"]
                elif line["kind"] != "sampled":  # never asked whole (questions() leaves them out too)
                    qs.append(Question(line["prompt_id"], line["continuation_id"], line["kind"],
                                       text[line["prompt_id"]], line["text"], len(line["token_ids"])))
            self.questions[split] = qs
        self.where = {q.continuation_id: (s, i) for s in SPLITS for i, q in enumerate(self.questions[s])}
        self._truth: dict[str, tuple[float, int]] = {}
        if practice_truth:
            from tasks.trajectory import load_trajectories

            truth = load_trajectories(suite).split("practice")  # practice only, by design (module docstring)
            logprob, lengths = truth.logprob, truth.lengths
            for q in self.questions["practice"]:
                i = truth.index(q.continuation_id)
                self._truth[q.continuation_id] = (float(logprob[i]), int(lengths[i]))

    def question(self, continuation_id: str) -> tuple[str, Question]:
        """(split, question) of a continuation id; KeyError naming it for anything that is not a shown question."""
        found = self.where.get(continuation_id)
        if found is None:
            raise KeyError(f"unknown continuation id {continuation_id!r}: not a question of suite {self.suite.name!r}")
        split, i = found
        return split, self.questions[split][i]

    def next_question(self, split: str, answered: set[str]) -> tuple[int, Question] | None:
        """The first question of ``split`` (suite order) not yet answered, with its index; None when all are done."""
        for i, q in enumerate(self.questions[split]):
            if q.continuation_id not in answered:
                return i, q
        return None

    def feedback(self, continuation_id: str, log10prob: float) -> dict[str, Any]:
        """Practice feedback: the true probability (log10, nats, "1 in N") and the signed error of the answer in
        orders of magnitude (``answer - truth``: positive over-estimates). KeyError for sealed questions: there is
        no sealed truth here."""
        true_nats, n = self._truth[continuation_id]
        err = log_errors(np.array([true_nats]), np.array([log10prob * LN10]), np.array([n], dtype=np.int64))
        e10 = float(err["error_log10"][0])
        true10 = true_nats / LN10
        return {"true_log10prob": true10, "true_logprob": true_nats, "true_one_in": one_in(true10),
                "your_log10prob": log10prob, "your_one_in": one_in(log10prob), "error_log10": e10,
                "abs_error_log10": abs(e10), "error_nats": float(err["error_nats"][0]), "n_tokens": n,
                "direction": "over" if e10 > 0 else "under" if e10 < 0 else "exact",
                "within_10x": bool(abs(e10) <= 1.0), "off_scale": bool(true10 > LOG10_MAX or true10 < LOG10_MIN)}


def check_log10prob(x: float) -> float:
    """The answer as stored: a finite float in ``[LOG10_MIN, LOG10_MAX]``; ValueError otherwise."""
    if not (isinstance(x, (int, float)) and math.isfinite(x) and LOG10_MIN <= x <= LOG10_MAX):
        raise ValueError(f"log10prob {x!r}: give log10 P between {LOG10_MIN:g} (1 in 10^12) and {LOG10_MAX:g} "
                         "(1 in 10)")
    return float(x)
