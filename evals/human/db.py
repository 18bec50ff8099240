"""The human-form database: participants, one-time invitations, sessions and submissions, through SQLAlchemy Core.

SQLite (a file under ``<data_dir>/human/``) is the default; any SQLAlchemy URL works (``postgresql+psycopg://...``), as
the queries use only portable Core constructs and the SQLite-only settings sit in a dialect-guarded connect hook.

Durability: every write runs in one transaction that commits before the caller builds its response; on SQLite the
journal is WAL with ``synchronous=FULL`` (each commit is fsynced, so neither ``kill -9`` nor a power cut loses an
acknowledged row), and write transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the lock
(``busy_timeout``) instead of failing with SQLITE_BUSY when a deferred read transaction tries to upgrade.

Secrets (invitation and session tokens) are stored only as sha256 digests, so a copy of the database cannot log in.
A ``meta`` table records the schema version and the suite (name and version) the database belongs to; ``open_db``
refuses a database of another schema version or another suite instead of guessing. Leaves out: schema migrations
(there is one version; a future change bumps ``SCHEMA_VERSION`` and adds its migration here). Additions that older
code ignores and newer code creates on open keep the version: the ``trajectory_answers`` table (trajectory suites)
is one, added to an existing database by ``open_db``'s ``create_all`` without touching its other tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from tasks.io import loads_json
from tasks.paths import data_dir

SCHEMA_VERSION = "1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
SESSION_SECONDS = 30 * 24 * 3600

metadata = sa.MetaData()
meta = sa.Table("meta", metadata, sa.Column("key", sa.String(64), primary_key=True),
                sa.Column("value", sa.Text, nullable=False))
participants = sa.Table(
    "participants", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
)
invitations = sa.Table(
    "invitations", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=True),  # NULL: an admin invitation
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("used", sa.Float, nullable=True),
)
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)
submissions = sa.Table(
    "submissions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("rest", sa.String(16), nullable=False),
    sa.Column("candidates", sa.Text, nullable=False),  # JSON list of {"text", "token_id", "p"}; p is a fraction
    sa.Column("kl", sa.Float, nullable=True),  # practice only: the sealed split is never scored by the server
    sa.Column("ce", sa.Float, nullable=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.UniqueConstraint("participant_id", "prompt_id", name="one_answer_per_prompt"),
    sa.Index("submissions_by_time", "participant_id", "split", "created"),
)
# Trajectory suites (``trajectory.py``): one answer per whole-continuation question. Added in a backward-compatible
# way: ``create_all`` adds this table to a database written before it, and next-token databases never use it.
trajectory_answers = sa.Table(
    "trajectory_answers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("continuation_id", sa.String(255), nullable=False),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("log10prob", sa.Float, nullable=False),  # the answer: log10 P(continuation | prompt), in [-12, -1]
    sa.Column("error_log10", sa.Float, nullable=True),  # practice only: answer - truth (the server never scores sealed)
    sa.Column("created", sa.Float, nullable=False),
    sa.UniqueConstraint("participant_id", "continuation_id", name="one_answer_per_continuation"),
    sa.Index("trajectory_answers_by_time", "participant_id", "split", "created"),
)


class DbError(ValueError):
    """The database cannot be used as asked (wrong schema or suite, unknown participant, used invitation, ...)."""


class AlreadyAnswered(DbError):
    pass


class RateLimited(DbError):
    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def default_url(suite_name: str) -> str:
    path = data_dir() / "human" / f"{suite_name}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _engine(url: str, *, immediate: bool) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20,
                           max_overflow=20)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see the module docstring)
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """One database for one suite; ``read()`` and ``write()`` give a connection inside a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown_url = shown(url)
        self._read = _engine(url, immediate=False)
        self._write = _engine(url, immediate=True) if url.startswith("sqlite") else self._read
        # SQLite has one writer at a time; threads of this process queue here instead of in SQLite's busy handler,
        # which polls with sleeps of up to 100 ms and made tail latencies under load seconds long
        self._write_lock = threading.Lock() if url.startswith("sqlite") else contextlib.nullcontext()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._read.begin() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; it commits when the block exits normally and rolls back on any exception."""
        with self._write_lock, self._write.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self._read.dispose()
        self._write.dispose()

    # --- participants and invitations ----------------------------------------------------------------------------
    def add_participant(self, name: str) -> str:
        """Create a participant and return a one-time invitation token."""
        if not NAME_RE.match(name) or name == "team":  # "team" names the pooled export
            raise DbError(f"participant name {name!r}: use 1-40 letters, digits, '_', '.' or '-' (it names export "
                          "files), other than 'team'")
        try:
            with self.write() as conn:
                pid = conn.execute(insert(participants).values(name=name, created=time.time())).inserted_primary_key[0]
                return self._invite(conn, pid, "participant")
        except IntegrityError as e:
            raise DbError(f"participant {name!r} exists: `logitpred participants link {name}` makes a new link") from e

    def new_link(self, name: str) -> str:
        """A fresh one-time invitation for an existing participant; their unused older invitations stop working."""
        with self.write() as conn:
            pid = conn.execute(select(participants.c.id).where(participants.c.name == name)).scalar()
            if pid is None:
                raise DbError(f"no participant {name!r}: add one with `logitpred participants add {name}`")
            conn.execute(update(invitations).where(invitations.c.participant_id == pid, invitations.c.used.is_(None))
                         .values(used=time.time()))
            return self._invite(conn, pid, "participant")

    def admin_link(self) -> str:
        """A one-time organiser link; earlier unused ones stop working (one live admin link at a time)."""
        with self.write() as conn:
            conn.execute(update(invitations).where(invitations.c.role == "admin", invitations.c.used.is_(None))
                         .values(used=time.time()))
            return self._invite(conn, None, "admin")

    @staticmethod
    def _invite(conn: Connection, participant_id: int | None, role: str) -> str:
        token = secrets.token_urlsafe(32)
        conn.execute(insert(invitations).values(token_hash=token_hash(token), participant_id=participant_id,
                                                role=role, created=time.time()))
        return token

    def invitation_state(self, token: str) -> str:
        """'valid', 'used' or 'unknown' (does not consume it)."""
        with self.read() as conn:
            row = conn.execute(select(invitations.c.used).where(invitations.c.token_hash == token_hash(token))).first()
        return "unknown" if row is None else ("used" if row.used is not None else "valid")

    def redeem(self, token: str) -> tuple[str, str, str]:
        """Consume an invitation; returns (session token, csrf token, role). Raises DbError for used/unknown ones."""
        now = time.time()
        with self.write() as conn:
            row = conn.execute(select(invitations).where(invitations.c.token_hash == token_hash(token))).first()
            if row is None:
                raise DbError("unknown invitation: check the link, or ask the organiser for a new one")
            if row.used is not None:
                raise DbError("this invitation link was already used: ask the organiser for a new one "
                              "(`logitpred participants link NAME`)")
            # conditional update: of two concurrent redemptions only one changes the row (on any database)
            done = conn.execute(update(invitations).where(invitations.c.token_hash == row.token_hash,
                                                          invitations.c.used.is_(None)).values(used=now))
            if done.rowcount != 1:
                raise DbError("this invitation link was already used: ask the organiser for a new one")
            session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            conn.execute(insert(sessions).values(token_hash=token_hash(session), participant_id=row.participant_id,
                                                 role=row.role, csrf=csrf, created=now, expires=now + SESSION_SECONDS))
        return session, csrf, row.role

    def session(self, token: str) -> dict[str, Any] | None:
        """The live session for a cookie value, with the participant's name; None if unknown or expired."""
        j = sessions.outerjoin(participants, sessions.c.participant_id == participants.c.id)
        with self.read() as conn:
            row = conn.execute(select(sessions.c.participant_id, sessions.c.role, sessions.c.csrf, sessions.c.expires,
                                      participants.c.name).select_from(j)
                               .where(sessions.c.token_hash == token_hash(token))).first()
        if row is None or row.expires < time.time():
            return None
        return dict(row._mapping)

    def end_session(self, token: str) -> None:
        with self.write() as conn:
            conn.execute(update(sessions).where(sessions.c.token_hash == token_hash(token)).values(expires=0.0))

    def participant_rows(self) -> list[dict[str, Any]]:
        """Every participant with counts per split and the practice means (for the organiser)."""
        s = submissions.c
        stats = (select(s.participant_id, s.split, func.count().label("n"), func.avg(s.kl).label("kl"),
                        func.avg(s.ce).label("ce"), func.max(s.created).label("last"))
                 .group_by(s.participant_id, s.split))
        with self.read() as conn:
            people = conn.execute(select(participants).order_by(participants.c.name)).all()
            by = {(r.participant_id, r.split): r for r in conn.execute(stats)}
        out = []
        for p in people:
            pr, se = by.get((p.id, "practice")), by.get((p.id, "sealed"))
            out.append({"id": p.id, "name": p.name, "practice": pr.n if pr else 0, "practice_kl": pr.kl if pr else None,
                        "practice_ce": pr.ce if pr else None, "sealed": se.n if se else 0,
                        "last": max([r.last for r in (pr, se) if r] or [None], key=lambda x: x or 0)})
        return out

    # --- submissions -----------------------------------------------------------------------------------------------
    def answered(self, participant_id: int, split: str) -> set[str]:
        with self.read() as conn:
            rows = conn.execute(select(submissions.c.prompt_id).where(submissions.c.participant_id == participant_id,
                                                                       submissions.c.split == split))
            return {r.prompt_id for r in rows}

    def running(self, conn: Connection, participant_id: int, split: str) -> dict[str, Any]:
        s = submissions.c
        row = conn.execute(select(func.count().label("n"), func.avg(s.kl).label("kl"), func.avg(s.ce).label("ce"))
                           .where(s.participant_id == participant_id, s.split == split)).one()
        return {"answered": row.n, "mean_kl_nats": row.kl, "mean_ce_nats": row.ce}

    def add_submission(self, participant_id: int, prompt_id: str, split: str, mode: str, rest: str,
                       candidates: list[dict[str, Any]], kl: float | None, ce: float | None, *,
                       sealed_per_minute: int) -> tuple[int, dict[str, Any]]:
        """Store one answer and commit; returns (submission id, running totals of that split).

        Raises ``AlreadyAnswered`` (each prompt is answered once) or ``RateLimited`` (sealed answers in the last
        minute over ``sealed_per_minute``); either way nothing is stored. The rate check counts after the insert in
        the same transaction, which on SQLite holds the write lock, so concurrent requests cannot both slip under it.
        """
        now = time.time()
        try:
            with self.write() as conn:
                row = {"participant_id": participant_id, "prompt_id": prompt_id, "split": split, "mode": mode,
                       "rest": rest, "candidates": json.dumps(candidates, ensure_ascii=False), "kl": kl, "ce": ce,
                       "created": now}
                sid = conn.execute(insert(submissions).values(**row)).inserted_primary_key[0]
                if split == "sealed":
                    check_rate(conn, submissions, participant_id, now, sealed_per_minute)
                return sid, self.running(conn, participant_id, split)
        except IntegrityError as e:
            raise AlreadyAnswered(f"prompt {prompt_id} is already answered: each prompt takes one answer") from e

    def list_submissions(self, participant_id: int | None = None, split: str | None = None) -> list[dict[str, Any]]:
        q = select(submissions, participants.c.name).join(participants).order_by(submissions.c.id)
        if participant_id is not None:
            q = q.where(submissions.c.participant_id == participant_id)
        if split is not None:
            q = q.where(submissions.c.split == split)
        with self.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for r in rows:
            r["candidates"] = loads_json(r["candidates"])  # strict, like every JSON the harness reads
        return rows


def check_rate(conn: Connection, table: sa.Table, participant_id: int, now: float, per_minute: int) -> None:
    """Raise ``RateLimited`` when ``table`` holds more than ``per_minute`` sealed rows of the participant in the last
    minute. Call it after the insert, in the same write transaction (``Database.add_submission``)."""
    s = table.c
    recent = conn.execute(select(s.created).where(s.participant_id == participant_id, s.split == "sealed",
                                                  s.created > now - 60).order_by(s.created)).scalars().all()
    if len(recent) > per_minute:
        raise RateLimited(f"at most {per_minute} sealed answers a minute: wait a moment and send it again",
                          retry_after=max(1, int(recent[0] + 61 - now)))


def shown(url: str) -> str:
    """A database URL as it may be printed or logged: its password replaced by ``***``."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it but the scheme
        return url.split("://", 1)[0] + "://..."


def open_db(url: str | None, suite: Any) -> Database:
    """Open (creating if new) the database of ``suite``; refuse one of another schema version or suite."""
    url = url or default_url(suite.name)
    db = Database(url)
    want = {"schema_version": SCHEMA_VERSION, "suite": suite.name, "suite_version": suite.version}
    with db.write() as conn:
        metadata.create_all(conn)  # no-op for existing tables
        have = {r.key: r.value for r in conn.execute(select(meta))}
        if not have:
            conn.execute(insert(meta), [{"key": k, "value": v} for k, v in want.items()])
            have = want
    if have.get("schema_version") != SCHEMA_VERSION:
        db.dispose()
        raise DbError(f"database {shown(url)} has schema version {have.get('schema_version')!r}; this logitpred expects "
                      f"{SCHEMA_VERSION!r}: export its submissions with the logitpred that wrote it, then use a new --db")
    if (have.get("suite"), have.get("suite_version")) != (suite.name, suite.version):
        db.dispose()
        raise DbError(f"database {shown(url)} holds answers for suite {have.get('suite')!r} version "
                      f"{have.get('suite_version')!r}, not {suite.name!r} version {suite.version!r}: give another --db")
    return db


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
