"""Storing trajectory-mode answers: one row per (participant, whole-continuation question), in ``db.trajectory_answers``.

The same guarantees as next-token submissions (``db.py``): each answer is one write transaction that commits before
the reply is built; a second answer to a question is refused by the table's unique constraint (on SQLite and
PostgreSQL alike, also for concurrent requests) and nothing is stored; sealed answers are rate limited per minute
(``db.check_rate``, counted after the insert in the same transaction). Only practice rows carry an error; the server
never scores a sealed answer.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .db import AlreadyAnswered, Database, check_rate, participants, trajectory_answers

T = trajectory_answers.c


def answered(db: Database, participant_id: int, split: str) -> set[str]:
    """The continuation ids of ``split`` the participant has answered."""
    with db.read() as conn:
        rows = conn.execute(select(T.continuation_id).where(T.participant_id == participant_id, T.split == split))
        return {r.continuation_id for r in rows}


def running(conn: Connection, participant_id: int, split: str) -> dict[str, Any]:
    """How many answers of ``split`` and, for practice, the mean absolute error in orders of magnitude (None for
    sealed: never computed)."""
    row = conn.execute(select(func.count().label("n"), func.avg(func.abs(T.error_log10)).label("err"))
                       .where(T.participant_id == participant_id, T.split == split)).one()
    return {"answered": row.n, "mean_abs_error_log10": row.err}


def add_answer(db: Database, participant_id: int, prompt_id: str, continuation_id: str, split: str,
               log10prob: float, error_log10: float | None, *, sealed_per_minute: int) -> tuple[int, dict[str, Any]]:
    """Store one answer and commit; returns (answer id, running totals of that split). Raises ``AlreadyAnswered``
    (one answer per question) or ``db.RateLimited``; either way nothing is stored."""
    now = time.time()
    try:
        with db.write() as conn:
            row = {"participant_id": participant_id, "prompt_id": prompt_id, "continuation_id": continuation_id,
                   "split": split, "log10prob": log10prob, "error_log10": error_log10, "created": now}
            aid = conn.execute(insert(trajectory_answers).values(**row)).inserted_primary_key[0]
            if split == "sealed":
                check_rate(conn, trajectory_answers, participant_id, now, sealed_per_minute)
            return aid, running(conn, participant_id, split)
    except IntegrityError as e:
        raise AlreadyAnswered(f"continuation {continuation_id} is already answered: each question takes one "
                              "answer") from e


def list_answers(db: Database, participant_id: int | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Answers (with the participant's ``name``) in the order they were stored, optionally of one person or split."""
    q = select(trajectory_answers, participants.c.name).join(participants).order_by(T.id)
    if participant_id is not None:
        q = q.where(T.participant_id == participant_id)
    if split is not None:
        q = q.where(T.split == split)
    with db.read() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def participant_rows(db: Database) -> list[dict[str, Any]]:
    """Every participant with answer counts per split, the practice mean absolute log10 error and the last answer
    time (the organiser's page and ``participants list``)."""
    stats = (select(T.participant_id, T.split, func.count().label("n"),
                    func.avg(func.abs(T.error_log10)).label("err"), func.max(T.created).label("last"))
             .group_by(T.participant_id, T.split))
    with db.read() as conn:
        people = conn.execute(select(participants).order_by(participants.c.name)).all()
        by = {(r.participant_id, r.split): r for r in conn.execute(stats)}
    out = []
    for p in people:
        pr, se = by.get((p.id, "practice")), by.get((p.id, "sealed"))
        last = [r.last for r in (pr, se) if r]
        out.append({"id": p.id, "name": p.name, "practice": pr.n if pr else 0,
                    "practice_error_log10": pr.err if pr else None, "sealed": se.n if se else 0,
                    "last": max(last) if last else None})
    return out
