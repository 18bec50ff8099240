"""Whole-continuation questions answered by any predictor: the chain rule over its own next-token predictions.

A trajectory suite asks, for a prompt ``x`` (target token ids) and a shown continuation ``y = y_1 .. y_m``, for
``log P(y | x)`` (``predictors.trajectory_format``). Every registered predictor answers without new code::

    log Q(y | x) = sum_t log q_t(y_t),   q_t = the predictor's next-token prediction on the step prompt x + y_<t

The harness builds the step prompts (``step_prompts``): ``x`` itself (the prompt's own view, its own id), then
``x + y_1``, ..., ``x + y_<m`` as ``PromptView``s with id ``<continuation_id>@<k>`` (k = continuation tokens shown,
1 .. m-1), token ids ``x + y_<k+1`` and text the target tokenizer's decode of those ids (as a prompt's own text is).
``chain_rule_answers`` asks them step-major: every question's step 1, then every step 2, ..., so when a predictor is
asked for step t it has only ever received ``y_<t`` of that continuation (no peeking: whole-continuation questions
show the continuation anyway, since it is the question, but a predictor still commits to q_t before it sees y_t;
``sampled`` continuations are never asked whole, ``tasks.trajectory.questions`` leaves them out). Identical step
prompts (the prompt itself for every continuation of it; continuations sharing a prefix) are asked once. Only the
probability of y_t is read from each prediction, in O(named tokens) for a ``top``/``rest`` prediction
(``token_probability``) and never densified.

Fast paths (``answer_questions``): a predictor object with a method ``trajectory_logprobs(questions)`` answers
itself; a predictor class with a registered fast path (``register_fast_path``; the built-in ones in
``predictors.chain_fast``: the n-gram's index, the helper models' one pass) is answered by it; every other one by the
generic chain rule. A fast path may leave a question unanswered (``None``); it then goes the generic way, said in
``Answers.notes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import PredictorContext, PromptView
from .format import Prediction, PredictionError, check
from .trajectory_format import TrajectoryPrediction

GENERIC = "chain rule over next-token predictions"


class ChainError(ValueError):
    """A predictor's answer to a step prompt or question is unusable; the message names the predictor and question."""


@dataclass(frozen=True)
class TrajectoryQuestion:
    """One whole-continuation question: the prompt (what a predictor may see of it) and the shown continuation
    (``token_ids``: 1 to M target ids, without the prompt; ``text``: the continuation's text, which after the
    prompt's text encodes to prompt + continuation ids; ``kind``: ``realized`` or ``given``)."""

    prompt: PromptView
    continuation_id: str
    kind: str
    text: str
    token_ids: tuple[int, ...]


def split_questions(suite: Any, split: str) -> list[TrajectoryQuestion]:
    """The whole-continuation questions of ``split``, in file order, from ``tasks.trajectory.questions`` (exactly what
    the split shows; never a sample). Raises ``SuiteError`` for an unknown split or a next-token suite."""
    from tasks.trajectory import questions
    from tasks.trajectory.spec import require

    require(suite)
    prompts: dict[str, PromptView] = {}
    out = []
    for line in questions(suite, split):
        if "continuation_id" not in line:
            prompts[line["prompt_id"]] = PromptView(line["prompt_id"], line["text"], tuple(line["token_ids"]))
            continue
        out.append(TrajectoryQuestion(prompts[line["prompt_id"]], line["continuation_id"], line["kind"],
                                      line["text"], tuple(int(t) for t in line["token_ids"])))
    return out


def step_id(continuation_id: str, k: int) -> str:
    """The id of the step prompt showing ``k >= 1`` tokens of a continuation: ``<continuation_id>@<k>``."""
    return f"{continuation_id}@{k}"


def _step_view(q: TrajectoryQuestion, k: int, tokenizer: Any) -> PromptView:
    """The step prompt ``x + y_<k+1`` (the prompt's own view for k = 0)."""
    if k == 0:
        return q.prompt
    ids = q.prompt.token_ids + q.token_ids[:k]
    return PromptView(step_id(q.continuation_id, k), tokenizer.decode(list(ids), clean_up_tokenization_spaces=False),
                      ids)


def step_prompts(question: TrajectoryQuestion, tokenizer: Any) -> list[PromptView]:
    """The ``m`` step prompts of a question (module doc): ``x, x + y_1, ..., x + y_<m``; step t (from 1) predicts
    ``y_t`` from the t-th view. ``tokenizer``: the target's (``PredictorContext.tokenizer()``), for the texts."""
    return [_step_view(question, k, tokenizer) for k in range(len(question.token_ids))]


def n_step_prompts(questions: Iterable[TrajectoryQuestion]) -> int:
    """How many step prompts ``chain_rule_answers`` asks for ``questions`` (identical ones of one step asked once)."""
    return len({(k, q.prompt.token_ids + q.token_ids[:k]) for q in questions for k in range(len(q.token_ids))})


class _Reader:
    """Reads single token probabilities from predictions, validated as files are (``predictors.format.check``)."""

    def __init__(self, ctx: PredictorContext) -> None:
        self.vocab, self.V, self.b = ctx.vocabulary, ctx.vocab_size, ctx.background
        self._b_total: float | None = None

    def row(self, pred: Prediction) -> Any:
        return check(pred, self.vocab, self.b, sparse_fraction=1.0)

    def prob(self, row: Any, token: int) -> float:
        """q(token) of a validated row, as ``densify`` would give it: a whole vector's entry; a named token's
        probability; else the rest's share (uniform: ``rest / (V - named)``, bit for bit ``densify``'s; unigram:
        ``rest * b[token] / (sum b - sum_named b)``, within ~1e-15 relative of ``densify``'s sum over the unnamed)."""
        if row.full is not None:
            return float(row.full[token])
        hit = np.flatnonzero(row.ids == token)
        if hit.size:
            return float(row.ps[hit[0]])
        if row.unigram:
            if self._b_total is None:
                self._b_total = float(self.b.sum())
            return float(row.rest * self.b[token] / (self._b_total - self.b[row.ids].sum()))
        return row.rest / (self.V - row.ids.size)


def token_probability(pred: Prediction, token: int, ctx: PredictorContext) -> float:
    """The probability a next-token prediction gives ``token`` (``densify(pred)[token]``, module doc), validating it
    on the way; raises ``PredictionError`` for an invalid prediction."""
    reader = _Reader(ctx)
    return reader.prob(reader.row(pred), int(token))


def chain_rule_answers(predictor: Any, ctx: PredictorContext, questions: Sequence[TrajectoryQuestion], *,
                       batch_size: int = 64, tokenizer: Any = None,
                       on_progress: Callable[[float], None] | None = None) -> list[TrajectoryPrediction]:
    """Answer every question by the chain rule over ``predictor.predict`` on its step prompts (module doc), asked
    step-major in batches of at most ``batch_size`` distinct step prompts. Returns one ``TrajectoryPrediction`` per
    question, in order: ``logprob`` (nats, the float64 sum of ``steps``) and ``steps`` (log q_t(y_t), one per token).

    Memory: one batch of predictions at a time (each is reduced to the probabilities it is asked for at once).
    ``on_progress(x)`` advances by ``x`` questions' worth of work (fractions: ``len(batch) / step prompts`` of all
    questions). Raises ``ChainError`` when the predictor returns the wrong number of predictions, a prediction for
    another prompt id, or an invalid prediction (the predictor, step prompt, question and step are named)."""
    tok = tokenizer if tokenizer is not None else ctx.tokenizer()
    reader = _Reader(ctx)
    name = getattr(predictor, "name", type(predictor).__name__)
    steps = [np.zeros(len(q.token_ids)) for q in questions]
    plan: list[dict[tuple[int, ...], tuple[PromptView, list[int]]]] = []
    for t in range(max((len(q.token_ids) for q in questions), default=0)):
        asked: dict[tuple[int, ...], tuple[PromptView, list[int]]] = {}
        for i, q in enumerate(questions):
            if t < len(q.token_ids):
                key = q.prompt.token_ids + q.token_ids[:t]
                if key not in asked:
                    asked[key] = (_step_view(q, t, tok), [])
                asked[key][1].append(i)
        plan.append(asked)
    share = len(questions) / max(sum(len(a) for a in plan), 1)
    for t, asked in enumerate(plan):
        items = list(asked.values())
        for b in range(0, len(items), batch_size):
            batch = items[b : b + batch_size]
            views = [v for v, _ in batch]
            preds = predictor.predict(views)
            if len(preds) != len(views):
                raise ChainError(f"predictor {name!r} returned {len(preds)} predictions for {len(views)} step prompts")
            for (view, wanting), pred in zip(batch, preds, strict=True):
                first = questions[wanting[0]]
                where = f"question ({first.prompt.id!r}, {first.continuation_id!r}) step {t + 1}"
                if pred.prompt_id != view.id:
                    raise ChainError(f"predictor {name!r} answered step prompt {view.id!r} ({where}) with a "
                                     f"prediction for {pred.prompt_id!r}")
                try:
                    row = reader.row(pred)
                except PredictionError as e:
                    raise ChainError(f"predictor {name!r}, step prompt {view.id!r} ({where}): {e}") from e
                for i in wanting:
                    p = reader.prob(row, questions[i].token_ids[t])
                    steps[i][t] = min(math.log(p), 0.0) if p > 0 else -math.inf
            if on_progress:
                on_progress(len(batch) * share)
    out = []
    for q, s in zip(questions, steps, strict=True):
        if not np.isfinite(s).all():
            raise ChainError(f"predictor {name!r} gave probability 0 to a token of ({q.prompt.id!r}, "
                             f"{q.continuation_id!r})")
        out.append(TrajectoryPrediction(q.prompt.id, q.continuation_id, min(math.fsum(s), 0.0),
                                        tuple(float(x) for x in s)))
    return out


# --- fast paths -----------------------------------------------------------------------------------------------------
FastPath = Callable[..., list[TrajectoryPrediction | None]]
_FAST: dict[type, tuple[str, FastPath]] = {}


def register_fast_path(cls: type, method: str) -> Callable[[FastPath], FastPath]:
    """Decorator: answer predictors of class ``cls`` (and subclasses) with ``fn(predictor, questions, *, batch_size,
    notes) -> list[TrajectoryPrediction | None]`` (None: leave that question to the generic chain rule; append to
    ``notes`` why). ``method`` says in a line how it answers (recorded with the predictions)."""

    def deco(fn: FastPath) -> FastPath:
        _FAST[cls] = (method, fn)
        return fn

    return deco


def fast_path(predictor: Any) -> tuple[str, FastPath] | None:
    """``(method, fn)`` answering ``predictor``'s trajectory questions without the generic chain rule, or None: its own
    ``trajectory_logprobs(questions)`` first, then a registered fast path of its class (nearest in the MRO)."""
    hook = getattr(predictor, "trajectory_logprobs", None)
    if callable(hook):
        return "the predictor's own trajectory_logprobs", lambda p, qs, **kw: hook(qs)
    from . import chain_fast  # noqa: F401  (registers the built-in fast paths)

    for cls in type(predictor).__mro__:
        if cls in _FAST:
            return _FAST[cls]
    return None


@dataclass
class Answers:
    """``answer_questions``' result: one prediction per question, how they were answered, and notes (fallbacks)."""

    predictions: list[TrajectoryPrediction]
    method: str
    notes: list[str] = field(default_factory=list)
    generic: int = 0  # questions answered by the generic chain rule after a fast path left them


def _checked(q: TrajectoryQuestion, a: Any, method: str) -> TrajectoryPrediction:
    if not isinstance(a, TrajectoryPrediction) or (a.prompt_id, a.continuation_id) != (q.prompt.id,
                                                                                         q.continuation_id):
        raise ChainError(f"{method}: answered question ({q.prompt.id!r}, {q.continuation_id!r}) with {a!r}")
    if not math.isfinite(a.logprob) or a.logprob > 1e-6:
        raise ChainError(f"{method}: log-probability {a.logprob!r} of ({q.prompt.id!r}, {q.continuation_id!r}) is "
                         "not a finite number <= 0")
    return a


def answer_questions(predictor: Any, ctx: PredictorContext, questions: Sequence[TrajectoryQuestion], *,
                     batch_size: int = 64, generic: bool = False,
                     on_progress: Callable[[float], None] | None = None) -> Answers:
    """Answer every question (in order) by ``predictor``'s fast path (``fast_path``) unless ``generic``, the
    questions it leaves by the generic chain rule (``chain_rule_answers``). ``on_progress(x)`` advances by ``x``
    questions. Raises ``ChainError`` for an unusable answer (wrong count or ids, non-finite or positive log-prob)."""
    fast = None if generic else fast_path(predictor)
    if fast is None:
        return Answers(chain_rule_answers(predictor, ctx, questions, batch_size=batch_size, on_progress=on_progress),
                       GENERIC)
    method, fn = fast
    notes: list[str] = []
    got = list(fn(predictor, questions, batch_size=batch_size, notes=notes))
    if len(got) != len(questions):
        raise ChainError(f"{method}: {len(got)} answers for {len(questions)} questions")
    left = [i for i, a in enumerate(got) if a is None]
    out: list[Any] = [None if a is None else _checked(q, a, method) for q, a in zip(questions, got, strict=True)]
    if on_progress:
        on_progress(len(questions) - len(left))
    if left:
        rest = chain_rule_answers(predictor, ctx, [questions[i] for i in left], batch_size=batch_size,
                                  on_progress=on_progress)
        for i, a in zip(left, rest, strict=True):
            out[i] = a
        notes.append(f"{len(left)} of {len(questions)} question(s) answered by the generic {GENERIC} instead")
    return Answers(out, method, notes, len(left))
