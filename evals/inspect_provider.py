"""inspect-ai model API provider ``predictor/NAME``: every registered logitpred predictor, usable from ``inspect eval``.

Registered through the ``inspect_ai`` entry point in ``pyproject.toml``, so ``--model predictor/unigram`` resolves from
the ``inspect`` CLI as well as from Python. ``-M suite=NAME`` names the suite (default: the one the task's system
message names); ``-M allow_unapproved=true`` is the exploratory opt-in; every other ``-M key=value`` is passed to the
predictor's factory as an option.

Approval: the provider applies the one check (``predictors.approval.require_approved``) when inspect creates the
model, before any sample runs (so a refused run never counts a sealed submission): ``--model predictor/NAME`` for a
system that is neither level 0 nor approved fails with the same ``ApprovalError`` as ``logitpred run``, naming the
approval command and the opt-in. With ``-M allow_unapproved=true`` it runs exploratory and is marked in the log: the
eval's ``model_args`` hold the opt-in, every sample's ``metadata["approval"]`` and every score's ``metadata["approval"]``
hold the approval metadata (``approved: false``, ``exploratory: true``, the reason), and the ``approved`` scorer's
mean in the results is the fraction of samples predicted by an approved system (0 for an exploratory run).

What travels: ``generate()`` receives only chat messages. The task (``evals/predictability.py``) sends a system message
``logitpred suite=NAME`` and the prompt text as the user message, nothing else. The provider loads what a predictor may
see for that suite (``PredictorContext.from_suite``: vocabulary, train-part background, tokenizer, practice truth;
never sealed truth), rebuilds the ``PromptView`` from the text (id and token ids of the suite prompt with exactly that
text, else the text re-encoded), and calls the predictor.

Trajectory suites (``evals.trajectory_inspect``): a sample whose messages end with an *assistant* message after the
user message asks a whole-continuation question, log P(assistant text | user text). The provider finds the suite's
question with exactly that prompt and continuation text (harness-side lookup of ids and target token ids; other text
is re-encoded, and a continuation that does not tokenize apart from its prompt is refused), answers it by the
predictor's fast path or the chain rule over its next-token predictions (``predictors.chain.answer_questions``, as
``logitpred run`` does), and returns ``metadata["logitpred"]`` with ``kind: "trajectory"``, the question's ids, the
``logprob`` (nats), the per-step log-probs and the approval metadata: a few numbers, kept in the log.

What comes back, and what the log keeps: the completion is the most probable candidate's text and
``metadata["logitpred"]`` holds a handle, the top 10 candidates and the approval metadata. The full prediction (often a 49,152-entry vector)
stays in this process until the scorer takes it with ``take_prediction(handle)``: written into the log three times per
sample it would make logs hundreds of KB per prompt. Left out: re-scoring an old log with ``inspect score`` (the full
predictions are not in it; rerun the eval instead).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageUser,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from predictors.approval import require_approved
from predictors.base import PredictorContext, PromptView, create, view
from predictors.format import Prediction

SYSTEM_PREFIX = "logitpred suite="
SUMMARY_TOP = 10
_PREDICTIONS: dict[str, Prediction] = {}  # handle -> full prediction, taken once by the scorer


def pin_dirs() -> None:
    """Pin logitpred's cwd-relative defaults (``./.logitpred``, ``./results``) before inspect changes directory.

    inspect runs a task with its file's folder (``evals/``) as the working directory. Unless ``LOGITPRED_HOME`` is
    set, use the ``.logitpred`` of the launch folder (``$PWD``), else of the nearest folder above the current one.
    """
    if os.environ.get("LOGITPRED_HOME"):
        return
    here = Path.cwd()
    for folder in [Path(os.environ.get("PWD", here)), here, *here.parents]:
        if (folder / ".logitpred").is_dir():
            os.environ["LOGITPRED_HOME"] = str(folder / ".logitpred")
            os.environ.setdefault("LOGITPRED_RESULTS", str(folder / "results"))
            return


pin_dirs()


def flag(value: Any, name: str) -> bool:
    """A boolean model arg: inspect's ``-M key=true`` arrives as a bool; strings and 0/1 are accepted too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ValueError(f"-M {name}={value!r}: give true or false")


def approval_of(model: Any) -> dict[str, Any] | None:
    """The approval metadata of an inspect ``Model`` backed by this provider (``None`` for any other model)."""
    meta = getattr(getattr(model, "api", None), "approval", None)
    return dict(meta) if isinstance(meta, dict) else None


def system_message(suite: str) -> str:
    """The system message by which a task tells the provider which suite its prompts come from."""
    return f"{SYSTEM_PREFIX}{suite}"


def take_prediction(handle: str) -> Prediction | None:
    """The full prediction behind a handle (removed from memory: each is scored once), or None if unknown."""
    return _PREDICTIONS.pop(handle, None)


def summarize(pred: Prediction, vocab: Any, k: int = SUMMARY_TOP) -> list[list[Any]]:
    """The ``k`` most probable named candidates as ``[token text, p]`` pairs (for people reading the log)."""
    if pred.probs is not None:
        from tasks.truth_stats import top_candidates

        q = np.asarray(pred.probs, dtype=np.float64)
        if q.ndim != 1 or q.size == 0:
            return []
        # the k largest, ties by id (as a stable argsort would give them), without sorting 49k entries (~2 ms)
        _, top, _ = top_candidates(q[None], min(k, q.size))
        return [[vocab.text[int(t)], round(float(q[t]), 6)] for t in top[:k]]
    pairs = list(pred.top.items()) if isinstance(pred.top, dict) else list(pred.top)
    pairs.sort(key=lambda cp: -float(cp[1]))
    return [[vocab.text[c] if isinstance(c, int) else c, round(float(p), 6)] for c, p in pairs[:k]]


class _SuiteView:
    """One suite as the provider sees it: the predictor built on its allowed context, and prompt views by text."""

    def __init__(self, suite_name: str, predictor: str, options: dict[str, Any], allow_unapproved: bool) -> None:
        from tasks import SPLITS, load_suite

        suite = load_suite(suite_name)
        self.suite = suite
        self.ctx = PredictorContext.from_suite(suite)
        self.predictor = create(predictor, self.ctx, allow_unapproved=allow_unapproved, **options)
        # Harness-side lookup: the view carries id and token ids only, never the realized next token.
        self.views: dict[str, PromptView] = {p.text: view(p) for s in SPLITS for p in suite.prompts(s)}
        self._tokenizer: Any = None
        self._questions: dict[tuple[str, str], Any] | None = None

    def prompt_view(self, text: str) -> PromptView:
        if text in self.views:
            return self.views[text]
        if self._tokenizer is None:
            self._tokenizer = self.ctx.tokenizer()
        ids = tuple(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return PromptView("adhoc-" + uuid.uuid5(uuid.NAMESPACE_URL, text).hex[:12], text, ids)

    def question(self, text: str, continuation: str) -> Any:
        """The whole-continuation question (``predictors.chain.TrajectoryQuestion``) of a prompt text and a
        continuation text: the suite's own (any split) where both match, else built from the target tokenizer's
        encoding (``given``; refused when the continuation does not tokenize apart from the prompt)."""
        from predictors.chain import TrajectoryQuestion, split_questions
        from tasks import SPLITS
        from tasks.trajectory import spec

        if self._questions is None:
            self._questions = {}
            if spec(self.suite) is not None:
                for s in SPLITS:
                    self._questions.update({(q.prompt.text, q.text): q for q in split_questions(self.suite, s)})
        if (text, continuation) in self._questions:
            return self._questions[(text, continuation)]
        pv = self.prompt_view(text)
        if self._tokenizer is None:
            self._tokenizer = self.ctx.tokenizer()
        ids = tuple(self._tokenizer(text + continuation, add_special_tokens=False)["input_ids"])
        n = len(pv.token_ids)
        if ids[:n] != pv.token_ids or len(ids) == n:
            raise ValueError(f"continuation {continuation!r} does not tokenize apart from its prompt (the target "
                             f"tokenizer merges across the boundary: prompt {list(pv.token_ids[-3:])} at its end, "
                             f"prompt + continuation {list(ids[max(0, n - 3):n + 3])} around it)")
        cid = "adhoc-" + uuid.uuid5(uuid.NAMESPACE_URL, text + "\0" + continuation).hex[:12]
        return TrajectoryQuestion(pv, cid, "given", continuation, ids[n:])


class PredictorAPI(ModelAPI):
    """A logitpred predictor behind inspect's model interface (no API key, no network)."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        super().__init__(model_name, base_url, api_key, api_key_vars=[], config=config)
        self.suite_override: str | None = model_args.pop("suite", None)
        self.allow_unapproved = flag(model_args.pop("allow_unapproved", False), "allow_unapproved")
        self.options = model_args
        # the one approval check, before any sample runs; every output carries its result
        self.approval = require_approved(model_name, self.options, allow_unapproved=self.allow_unapproved)
        self._suites: dict[str, _SuiteView] = {}

    def _suite(self, messages: list[ChatMessage]) -> str:
        if self.suite_override:
            return str(self.suite_override)
        for m in messages:
            if isinstance(m, ChatMessageSystem) and m.text.startswith(SYSTEM_PREFIX):
                return m.text[len(SYSTEM_PREFIX):].strip()
        raise ValueError("predictor/ models need the suite: run a logitpred task (evals/predictability.py) or pass "
                         "-M suite=NAME")

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        users = [m for m in input if isinstance(m, ChatMessageUser)]
        if len(users) != 1:
            raise ValueError(f"predictor/{self.model_name} expects exactly one user message (the prompt text), "
                             f"got {len(users)}")
        name = self._suite(input)
        if name not in self._suites:
            self._suites[name] = _SuiteView(name, self.model_name, self.options, self.allow_unapproved)
        sv = self._suites[name]
        continuations = [m for m in input if isinstance(m, ChatMessageAssistant)]
        if continuations:
            return self._trajectory(sv, users[0].text, continuations)
        pv = sv.prompt_view(users[0].text)
        preds = sv.predictor.predict([pv])
        if len(preds) != 1:
            raise ValueError(f"predictor {self.model_name!r} returned {len(preds)} predictions for one prompt")
        handle = uuid.uuid4().hex
        _PREDICTIONS[handle] = preds[0]
        top = summarize(preds[0], sv.ctx.vocabulary)
        meta = {"handle": handle, "prompt_id": pv.id, "top": top,
                "rest": None if preds[0].probs is not None else preds[0].rest, "approval": dict(self.approval)}
        output = ModelOutput.from_content(model=f"predictor/{self.model_name}", content=top[0][0] if top else "")
        output.metadata = {"logitpred": meta}
        return output


    def _trajectory(self, sv: _SuiteView, text: str, continuations: list[ChatMessageAssistant]) -> ModelOutput:
        """A whole-continuation question: log P(continuation | prompt) by the predictor (module doc)."""
        from predictors.chain import answer_questions

        if len(continuations) != 1:
            raise ValueError(f"predictor/{self.model_name}: a whole-continuation question has exactly one assistant "
                             f"message (the continuation), got {len(continuations)}")
        q = sv.question(text, continuations[0].text)
        answers = answer_questions(sv.predictor, sv.ctx, [q])
        a = answers.predictions[0]
        meta = {"kind": "trajectory", "prompt_id": q.prompt.id, "continuation_id": q.continuation_id,
                "logprob": a.logprob, "steps": list(a.steps) if a.steps is not None else None,
                "answered_by": answers.method, "approval": dict(self.approval)}
        output = ModelOutput.from_content(model=f"predictor/{self.model_name}",
                                          content=f"log10 P = {a.logprob / np.log(10):.4f}")
        output.metadata = {"logitpred": meta}
        return output


@modelapi(name="predictor")
def predictor_api() -> type[ModelAPI]:
    return PredictorAPI


def model_label(model: str) -> str:
    """``predictor/ngram`` -> ``ngram``: the predictor's name as run records and the holdout ledger know it."""
    return re.sub(r"^predictor/", "", model)
