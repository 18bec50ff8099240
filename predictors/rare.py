"""Rare-behaviour questions answered by any predictor, without the target: the chain rule over its own predictions.

The questions (``tasks.rare.questions``) ask "P(B | x)?" for an input ``x`` and "P_D(B)?" for an input distribution
``D``; a behaviour B is a prefix-free set of target token sequences (members), so its events are disjoint and

    Q(B | x) = sum_j Q(b_j | x),        Q(b_j | x) = prod_t q(b_j,t | x, b_j,<t)      (``predictors.chain``)
    Q_D(B)  = sum_x p_D(x) Q(B | x)     over a product distribution's support (shown in its distribution line),

or, when the support has more than ``max_inputs`` inputs, the mean of Q(B | x) over ``max_inputs`` inputs drawn from D
with ``seed`` (an unbiased estimate of the sum; said in the returned notes); for a suite distribution, the mean over
its prompts (its per-input questions). Each member of each input is one whole-continuation question of
``predictors.chain.answer_questions`` (the predictor's fast path where it has one, e.g. the n-gram's index).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .base import PredictorContext, PromptView
from .chain import TrajectoryQuestion, answer_questions
from .trajectory_format import TrajectoryPrediction

MAX_INPUTS = 4096  # inputs of a product distribution's support a P_D(B) answer sums over at most


def _support(line: dict[str, Any], max_inputs: int, seed: int) -> tuple[list[list[int]], np.ndarray, str]:
    """The inputs (prefix included) and weights a P_D(B) answer averages over, and how they were chosen."""
    prefix = list(line["prefix_ids"])
    pos = [([c["token_id"] for c in p], np.array([c["p"] for c in p], dtype=np.float64)) for p in line["positions"]]
    size = math.prod(len(t) for t, _ in pos)
    if size <= max_inputs:
        xs = [prefix + list(c) for c in itertools.product(*(t for t, _ in pos))]
        w = np.array([math.prod(x) for x in itertools.product(*(p for _, p in pos))])
        return xs, w, f"the whole support ({size} inputs)"
    rng = np.random.default_rng(seed)
    cols = [np.array(t)[rng.choice(len(t), size=max_inputs, p=p / p.sum())] for t, p in pos]
    xs = [prefix + [int(c[i]) for c in cols] for i in range(max_inputs)]
    return xs, np.full(max_inputs, 1.0 / max_inputs), f"{max_inputs} inputs drawn with seed {seed} of {size}"


def answer_rare(predictor: Any, ctx: PredictorContext, lines: Sequence[dict[str, Any]], *, batch_size: int = 64,
                max_inputs: int = MAX_INPUTS, seed: int = 0, generic: bool = False,
                on_progress: Callable[[float], None] | None = None) -> tuple[list[TrajectoryPrediction], list[str]]:
    """Answer every question line of ``lines`` (``tasks.rare.questions.questions``; distribution lines are read for
    their supports) with ``predictor``: one ``TrajectoryPrediction`` (``prompt_id``, ``continuation_id``,
    ``logprob`` in nats) per question, in order, and notes saying how aggregates were formed. Raises
    ``predictors.chain.ChainError`` for unusable predictions."""
    tok = ctx.tokenizer()
    dists = {x["distribution"]: x for x in lines if "distribution" in x}
    asked = [x for x in lines if "continuation_id" in x]
    items: list[TrajectoryQuestion] = []
    plan: list[tuple[list[int], np.ndarray | None]] = []  # per question: its item indices per input, weights
    notes: list[str] = []
    views: dict[tuple[int, ...], PromptView] = {}

    def view(ids: list[int], pid: str) -> PromptView:
        key = tuple(ids)
        if key not in views:
            views[key] = PromptView(pid, tok.decode(ids, clean_up_tokenization_spaces=False), key)
        return views[key]

    def add(v: PromptView, members: list[list[int]], cid: str) -> list[int]:
        at = len(items)
        items.extend(TrajectoryQuestion(v, f"{cid}#{j}", "given", "", tuple(m)) for j, m in enumerate(members))
        return list(range(at, len(items)))

    for q in asked:
        if q["question"] == "P(B|x)":
            plan.append(([*add(view(list(q["token_ids"]), q["prompt_id"]), q["members"], q["continuation_id"])],
                         None))
            continue
        d = dists[q["prompt_id"]]
        if d["kind"] != "product":  # a suite or helper sample: the mean over its per-input questions (below)
            plan.append(([], None))
            continue
        xs, w, how = _support(d, max_inputs, seed)
        notes.append(f"P_D({q['continuation_id']}) on {q['prompt_id']}: {how}")
        idx = [add(view(x, f"{q['prompt_id']}@{k}"), q["members"], q["continuation_id"]) for k, x in enumerate(xs)]
        plan.append(([i for group in idx for i in group], w))
    got = answer_questions(predictor, ctx, items, batch_size=batch_size, generic=generic, on_progress=on_progress)
    lq = np.array([a.logprob for a in got.predictions])
    out: list[TrajectoryPrediction] = []
    per_input: dict[tuple[str, str], list[float]] = {}
    for q, (idx, w) in zip(asked, plan, strict=True):
        J = len(q["members"])
        if w is None and idx:  # P(B | x): logsumexp over members
            val = float(np.logaddexp.reduce(lq[idx]))
            per_input.setdefault((q["prompt_id"].rsplit("/x", 1)[0], q["continuation_id"]), []).append(val)
        elif w is not None:
            by_input = np.logaddexp.reduce(lq[idx].reshape(len(w), J), axis=1)
            val = float(np.logaddexp.reduce(by_input + np.log(w)))
        else:
            val = math.nan  # suite aggregate: filled in below
        out.append(TrajectoryPrediction(q["prompt_id"], q["continuation_id"], min(val, 0.0)))
    for i, (q, a) in enumerate(zip(asked, out, strict=True)):
        if math.isnan(a.logprob):
            vals = np.array(per_input[(q["prompt_id"], q["continuation_id"])])
            mean = float(np.logaddexp.reduce(vals) - np.log(len(vals)))
            out[i] = TrajectoryPrediction(q["prompt_id"], q["continuation_id"], min(mean, 0.0))
            notes.append(f"P_D({q['continuation_id']}) on {q['prompt_id']}: the mean over its {len(vals)} prompts")
    return out, notes + got.notes
