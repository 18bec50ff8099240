"""What a predictor may see of a split: the prompts and the whole-continuation questions, never a sample.

``questions(suite, split)`` yields, as JSON-ready dicts, exactly what a split shows: one line per prompt
(``prompt_id``, ``text``, ``token_ids``), each followed by one line per whole-continuation question of that prompt
(``prompt_id``, ``continuation_id``, ``kind``, ``text``, ``token_ids`` of the continuation alone). Whole-continuation
questions are ``realized`` and ``given`` continuations only: a ``sampled`` continuation is a sample of the target,
itself information about the target, so it is never shown whole (step-wise questions along samples are released
step by step: ``tasks.trajectory.steps``, ``evals.stepwise``). Nothing here reads the trajectory folder, where the samples lie: the shown
continuations come from the suite alone (``tasks.trajectory.sets.shown_continuations``).

No split asks a question whose answer another of its questions shows: in a trajectory suite every prompt's realized
continuation is shown, and its first token is the realized next token, so the plain next-token question of that
prompt is not asked (``next_token_questions`` returns none; the manifest's ``trajectory.questions`` says so).
A next-token suite shows its prompts and asks every next-token question.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..truth import SPLITS, SuiteError
from .sets import shown_continuations
from .spec import spec

NEXT_TOKEN_ONLY = {"next_token": True, "whole_continuation": [], "step_wise": []}


def asked(suite: Any) -> dict[str, Any]:
    """The kinds of question each split of ``suite`` asks: ``{"next_token": bool, "whole_continuation": [kinds],
    "step_wise": [kinds]}`` (a trajectory suite's manifest section; next-token suites ask next-token questions only).
    A next-token question is never asked where a realized continuation is shown (module doc)."""
    sp = spec(suite)
    if sp is None:
        return dict(NEXT_TOKEN_ONLY)
    q = dict(sp.questions)
    if "realized" in q.get("whole_continuation", ()):
        q["next_token"] = False  # the realized continuation shows the next token: never both
    return q


def _check(split: str) -> None:
    if split not in SPLITS:
        raise SuiteError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def questions(suite: Any, split: str) -> Iterator[dict[str, Any]]:
    """Every line a predictor may see of ``split`` (module doc), prompts in file order, each followed by its
    whole-continuation questions (realized, then given in behaviour-file order). Raises ``SuiteError`` for an unknown
    split or a damaged behaviour file."""
    _check(split)
    kinds = set(asked(suite)["whole_continuation"])
    shown = shown_continuations(suite, split) if kinds else {}
    for p in suite.prompts(split):
        yield {"prompt_id": p.id, "text": p.text, "token_ids": list(p.token_ids)}
        for c in shown.get(p.id, []):
            if c.kind in kinds and c.kind != "sampled":
                yield {"prompt_id": p.id, "continuation_id": c.id, "kind": c.kind, "text": c.text,
                       "token_ids": list(c.token_ids)}


def next_token_questions(suite: Any, split: str) -> list[Any]:
    """The prompts (``tasks.suite.Prompt``) of ``split`` whose plain next-token question the split asks: all of them
    in a next-token suite, none in a trajectory suite (each shows its realized continuation). Raises ``SuiteError``
    for an unknown split."""
    _check(split)
    return suite.prompts(split) if asked(suite)["next_token"] else []
