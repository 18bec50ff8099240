"""The trajectory mode's JSON API (added by ``app.create_app`` only for trajectory suites; ``trajectory.py``).

- ``GET /api/trajectory/next?split=``: the first unanswered question of the split: the prompt, one whole continuation
  (realized or given; never sampled), its kind and token count, and the scale of the answer.
- ``POST /api/trajectory/answer`` ``{"continuation_id", "log10prob"}``: one answer per question (409 on a second),
  ``log10prob`` a JSON number in [-12, -1] (422 naming the field otherwise). Practice answers return the true
  probability and the signed error in orders of magnitude; sealed answers return nothing of the truth, which the
  server never loads.
- ``GET /api/trajectory/answers``: the participant's own answers (practice with their error, sealed without).
Every POST needs the session's CSRF token and a same-origin ``Origin``/``Referer``, as the next-token form's (``app``).

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, which name dependencies local
to ``add_routes``, when it registers them.
"""

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from tasks.suite import SPLITS

from . import trajectory_db as tdb
from .db import AlreadyAnswered, Database, RateLimited
from .trajectory import LOG10_MAX, LOG10_MIN, STEP, TrajectoryGame, check_log10prob, one_in
from .web import json_body


class TrajectoryAnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    continuation_id: str = Field(min_length=1, max_length=255)
    # a JSON number, never a string; NaN and infinities refused; range [-12, -1]
    log10prob: float = Field(strict=True, allow_inf_nan=False, ge=LOG10_MIN, le=LOG10_MAX)


def progress(db: Database, game: TrajectoryGame, participant_id: int) -> dict[str, Any]:
    """Answers per split against the number of questions; the practice mean absolute error (sealed: none)."""
    out = {}
    with db.read() as conn:
        for split in SPLITS:
            out[split] = {**tdb.running(conn, participant_id, split), "total": len(game.questions[split])}
    out["sealed"].pop("mean_abs_error_log10")  # never computed
    return out


def add_routes(app: FastAPI, game: TrajectoryGame, db: Database, *, participant: Any, csrf: Any,
               sealed_per_minute: int) -> None:
    """Add the trajectory routes; ``participant`` and ``csrf`` are the app's session dependencies."""
    Participant = Annotated[dict, Depends(participant)]
    scale = {"min": LOG10_MIN, "max": LOG10_MAX, "step": STEP}

    @app.get("/api/trajectory/next")
    def next_question(s: Participant, split: Literal["practice", "sealed"] = "practice") -> dict[str, Any]:
        total = len(game.questions[split])
        found = game.next_question(split, tdb.answered(db, s["participant_id"], split))
        if found is None:
            return {"done": True, "split": split, "total": total}
        i, q = found
        return {"done": False, "split": split, "index": i, "total": total, "question": q.public(), "scale": scale}

    @app.post("/api/trajectory/answer")
    def answer(s: Annotated[dict, Depends(csrf)],
               body: Annotated[TrajectoryAnswerIn, json_body(TrajectoryAnswerIn)]) -> dict[str, Any]:
        try:
            split, q = game.question(body.continuation_id)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from e
        try:
            x = check_log10prob(body.log10prob)  # the model checks it too; this is the rule's one home
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        fb = game.feedback(q.continuation_id, x) if split == "practice" else None
        try:
            aid, running = tdb.add_answer(db, s["participant_id"], q.prompt_id, q.continuation_id, split, x,
                                          fb["error_log10"] if fb else None, sealed_per_minute=sealed_per_minute)
        except AlreadyAnswered as e:
            raise HTTPException(409, str(e)) from e
        except RateLimited as e:
            raise HTTPException(429, str(e), headers={"retry-after": str(e.retry_after)}) from e
        out = {"accepted": True, "answer_id": aid, "prompt_id": q.prompt_id, "continuation_id": q.continuation_id,
               "split": split, "log10prob": x, "one_in": one_in(x), "answered": running["answered"],
               "total": len(game.questions[split])}
        if fb:  # practice only
            out["feedback"], out["running"] = fb, running
        return out

    @app.get("/api/trajectory/answers")
    def my_answers(s: Participant) -> dict[str, Any]:
        keep = ("id", "prompt_id", "continuation_id", "split", "log10prob", "error_log10", "created")
        return {"answers": [{k: r[k] for k in keep} for r in tdb.list_answers(db, s["participant_id"])]}
