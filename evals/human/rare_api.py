"""The rare-behaviour mode's JSON API (added by ``app.create_app`` when given a ``RareGame``; ``rare.py``).

- ``GET /api/rare/next``: the first unanswered rare question: its kind, the behaviour's texts, the distribution
  (prefix and per-position token lists with weights, or the suite it draws prompts from), the input text for
  P(B|x), the question in words, and the answer's scale.
- ``POST /api/rare/answer`` ``{"prompt_id", "continuation_id", "log10prob"}``: one answer per question (409 on a
  second), ``log10prob`` a JSON number in [-12, -1] (422 naming the field otherwise), unknown question 404. Every
  answer returns the true probability and the signed error in orders of magnitude: there is no sealed rare split.
- ``GET /api/rare/answers``: the participant's own answers with their error.
Every POST needs the session's CSRF token and a same-origin ``Origin``/``Referer`` (``app``).

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations when it registers them.
"""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from . import trajectory_db as tdb
from .db import AlreadyAnswered, Database, RateLimited
from .rare import SPLIT, RareGame
from .trajectory import LOG10_MAX, LOG10_MIN, STEP, check_log10prob, one_in
from .web import json_body


class RareAnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_id: str = Field(min_length=1, max_length=64)
    continuation_id: str = Field(min_length=1, max_length=128)
    log10prob: float = Field(strict=True, allow_inf_nan=False, ge=LOG10_MIN, le=LOG10_MAX)


def progress(db: Database, game: RareGame, participant_id: int) -> dict[str, Any]:
    """Answers against the number of questions and the mean absolute error; ``sealed``: none (no sealed rare split)."""
    with db.read() as conn:
        pr = {**tdb.running(conn, participant_id, SPLIT), "total": len(game.questions)}
    return {"practice": pr, "sealed": {"answered": 0, "total": 0}}


def add_routes(app: FastAPI, game: RareGame, db: Database, *, participant: Any, csrf: Any) -> None:
    """Add the rare routes; ``participant`` and ``csrf`` are the app's session dependencies."""
    Participant = Annotated[dict, Depends(participant)]
    scale = {"min": LOG10_MIN, "max": LOG10_MAX, "step": STEP}

    @app.get("/api/rare/next")
    def next_question(s: Participant) -> dict[str, Any]:
        total = len(game.questions)
        found = game.next_question(tdb.answered(db, s["participant_id"], SPLIT))
        if found is None:
            return {"done": True, "total": total}
        i, q = found
        return {"done": False, "index": i, "total": total, "question": q.public(), "scale": scale}

    @app.post("/api/rare/answer")
    def answer(s: Annotated[dict, Depends(csrf)],
               body: Annotated[RareAnswerIn, json_body(RareAnswerIn)]) -> dict[str, Any]:
        try:
            q = game.question(body.prompt_id, body.continuation_id)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from e
        try:
            x = check_log10prob(body.log10prob)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        fb = game.feedback(q, x)
        try:  # split practice: never rate limited (sealed_per_minute only counts sealed rows)
            aid, running = tdb.add_answer(db, s["participant_id"], q.prompt_id, q.key, SPLIT, x, fb["error_log10"],
                                          sealed_per_minute=0)
        except AlreadyAnswered as e:
            raise HTTPException(409, f"question ({q.prompt_id}, {q.continuation_id}) is already answered: each "
                                     "question takes one answer") from e
        except RateLimited as e:  # pragma: no cover - practice rows are never rate limited
            raise HTTPException(429, str(e)) from e
        return {"accepted": True, "answer_id": aid, "prompt_id": q.prompt_id, "continuation_id": q.continuation_id,
                "log10prob": x, "one_in": one_in(x), "answered": running["answered"], "total": len(game.questions),
                "feedback": fb, "running": running}

    @app.get("/api/rare/answers")
    def my_answers(s: Participant) -> dict[str, Any]:
        rows = tdb.list_answers(db, s["participant_id"], SPLIT)
        keys = {q.key: q for q in game.questions}
        return {"answers": [{"id": r["id"], "prompt_id": r["prompt_id"],
                             "continuation_id": keys[r["continuation_id"]].continuation_id,
                             "log10prob": r["log10prob"], "error_log10": r["error_log10"], "created": r["created"]}
                            for r in rows if r["continuation_id"] in keys]}
