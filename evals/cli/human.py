"""CLI of the human form: ``serve``, ``participants add/link/list/admin-link`` and ``export``.

The database defaults to ``<data_dir>/human/<suite>.sqlite``; ``--db`` takes any SQLAlchemy URL (PostgreSQL included).
Links printed here are one-time: ``participants link NAME`` replaces a lost or used one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import SplitOpt, SuiteOpt, console, fail, load_suite, out

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy database URL (default: a SQLite file per suite).")]
RareOpt = Annotated[Path | None, typer.Option(
    "--rare-spec", help="Rare-behaviour mode: the questions of this spec's built reference set (`logitpred rare "
                        "build --spec FILE`); --suite is then ignored.")]
UrlOpt = Annotated[str, typer.Option("--url", help="Address participants open (where `logitpred serve` listens).")]
participants_app = typer.Typer(help="Invite and list the participants of the human form.", no_args_is_help=True)


def _rare(spec: Path) -> Any:
    """The ``RareGame`` of a spec's built reference set (exit 2 naming what is missing)."""
    from ..human.rare import load_rare

    try:
        return load_rare(spec)
    except (ValueError, OSError) as e:
        fail(str(e))


def _db(suite: str, db: str | None, rare_spec: Path | None = None) -> tuple[Any, Any]:
    from ..human.db import DbError, open_db

    s = _rare(rare_spec).form if rare_spec else load_suite(suite)
    try:
        return s, open_db(db, s)
    except DbError as e:
        fail(str(e))


def serve(
    suite: SuiteOpt = "wiki",
    host: Annotated[str, typer.Option(help="Interface to listen on; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    db: DbOpt = None,
    sealed_per_minute: Annotated[int, typer.Option(help="Sealed answers allowed per participant per minute.")] = 20,
    max_body: Annotated[int, typer.Option(help="Largest request body accepted, in bytes.")] = 16384,
    secure_cookies: Annotated[bool, typer.Option(help="Mark cookies Secure (when served behind HTTPS).")] = False,
    url: Annotated[str | None, typer.Option(help="Public address (e.g. https://predict.example.org): printed links, and "
                                                 "the origin every answer must come from. Required behind a proxy.")]
    = None,
    rare_spec: RareOpt = None,
) -> None:
    """Serve the human prediction form for a suite (practice with feedback, sealed without), or, with --rare-spec,
    for the rare-behaviour questions of a built reference set (all with feedback: there is no sealed rare split)."""
    import uvicorn

    from tasks import SuiteError

    from ..human.app import create_app
    from ..human.db import DbError

    rare = _rare(rare_spec) if rare_spec else None
    s = rare.form if rare else load_suite(suite)
    try:
        app = create_app(None if rare else s, db_url=db, sealed_per_minute=sealed_per_minute, max_body=max_body,
                         secure_cookies=secure_cookies, public_url=url,  # None: the request's own scheme and Host
                         rare=rare)
    except (DbError, SuiteError, ValueError) as e:
        fail(str(e))
    if secure_cookies and not url:
        console.print("[yellow]warning:[/] --secure-cookies without --url: behind an HTTPS proxy give the public "
                      "address with --url, or every answer is refused as cross-site")
    if host not in ("127.0.0.1", "localhost", "::1") and not secure_cookies:
        console.print("[yellow]warning:[/] listening beyond loopback without --secure-cookies: put it behind HTTPS")
    base = url or f"http://{host}:{port}"
    what = f"rare-behaviour questions of {rare_spec} ({len(rare.questions)})" if rare else f"suite [bold]{s.name}[/]"
    out.print(f"human form for {what} {s.version} at {base}  (database {app.state.db.shown_url})")
    out.print(f"organiser page (one-time link): {base}/join/{app.state.db.admin_link()}")
    which = f"--rare-spec {rare_spec}" if rare else f"--suite {s.name}"
    out.print(f"invite participants with: logitpred participants add NAME {which} --url {base}", soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _print_link(suite: str, db: str | None, url: str, make: Callable[[Any], str],
                rare_spec: Path | None = None) -> None:
    """Print ``URL/join/TOKEN`` for a token made by ``make(database)``; a refused request is a clear error."""
    from ..human.db import DbError

    _, d = _db(suite, db, rare_spec)
    try:
        token = make(d)
    except DbError as e:
        fail(str(e))
    out.print(f"{url.rstrip('/')}/join/{token}", soft_wrap=True)


@participants_app.command("add")
def participants_add(name: Annotated[str, typer.Argument(help="Participant name (letters, digits, _ . -).")],
                     suite: SuiteOpt = "wiki", db: DbOpt = None, url: UrlOpt = "http://127.0.0.1:8000",
                     rare_spec: RareOpt = None) -> None:
    """Add a participant and print their one-time invitation link."""
    _print_link(suite, db, url, lambda d: d.add_participant(name), rare_spec)


@participants_app.command("link")
def participants_link(name: Annotated[str, typer.Argument(help="An existing participant.")], suite: SuiteOpt = "wiki",
                      db: DbOpt = None, url: UrlOpt = "http://127.0.0.1:8000", rare_spec: RareOpt = None) -> None:
    """Print a new one-time link for a participant (their unused older links stop working)."""
    _print_link(suite, db, url, lambda d: d.new_link(name), rare_spec)


@participants_app.command("admin-link")
def participants_admin_link(suite: SuiteOpt = "wiki", db: DbOpt = None,
                            url: UrlOpt = "http://127.0.0.1:8000", rare_spec: RareOpt = None) -> None:
    """Print a one-time link to the organiser page (progress of everyone, exports)."""
    _print_link(suite, db, url, lambda d: d.admin_link(), rare_spec)


@participants_app.command("list")
def participants_list(suite: SuiteOpt = "wiki", db: DbOpt = None, rare_spec: RareOpt = None) -> None:
    """Participants with their progress and practice scores (sealed scores: `logitpred export --score`)."""
    from ..human.trajectory import TrajectoryGame, is_trajectory_suite

    if rare_spec:
        return _list_rare_answers(rare_spec, db)
    s, d = _db(suite, db)
    if is_trajectory_suite(s):
        return _list_trajectory_answers(s, d, TrajectoryGame(s, practice_truth=False))
    table = Table("name", "practice", "practice mean KL (nats)", "practice mean CE (nats)", "sealed",
                  title=f"human form, suite {s.name}")
    for p in d.participant_rows():
        table.add_row(p["name"], f"{p['practice']}/{s.manifest['sizes']['practice']}",
                      "-" if p["practice_kl"] is None else f"{p['practice_kl']:.3f}",
                      "-" if p["practice_ce"] is None else f"{p['practice_ce']:.3f}",
                      f"{p['sealed']}/{s.manifest['sizes']['sealed']}")
    out.print(table)


def _list_trajectory_answers(s: Any, d: Any, game: Any) -> None:
    """``participants list`` of a trajectory suite: answers per split and the practice mean absolute log10 error."""
    from ..human.trajectory_db import participant_rows

    totals = {k: len(v) for k, v in game.questions.items()}
    table = Table("name", "practice", "practice mean |error| (orders of magnitude)", "sealed",
                  title=f"human form, trajectory suite {s.name}")
    for p in participant_rows(d):
        err = p["practice_error_log10"]
        table.add_row(p["name"], f"{p['practice']}/{totals['practice']}", "-" if err is None else f"{err:.2f}",
                      f"{p['sealed']}/{totals['sealed']}")
    out.print(table)


def _list_rare_answers(rare_spec: Path, db: str | None) -> None:
    from ..human.trajectory_db import participant_rows

    game = _rare(rare_spec)
    _, d = _db("", db, rare_spec)
    table = Table("name", "answered", "mean |error| (orders of magnitude)",
                  title=f"human form, rare-behaviour questions of {rare_spec}")
    for p in participant_rows(d):
        err = p["practice_error_log10"]
        table.add_row(p["name"], f"{p['practice']}/{len(game.questions)}", "-" if err is None else f"{err:.2f}")
    out.print(table)


def _export_rare(rare_spec: Path, db: str | None, participant: list[str] | None, team: bool, out_dir: Path | None,
                 score: bool) -> None:
    """``export --rare-spec``: whole-continuation files of the rare answers, scored by ``rare score`` with --score."""
    from tasks.paths import results_dir

    from ..human.rare import export as export_rare
    from .rare import rare_score

    game = _rare(rare_spec)
    _, d = _db("", db, rare_spec)
    folder = out_dir or results_dir() / "human" / game.form.name
    try:
        written = export_rare(d, game, folder, names=participant or None, team=team)
    except ValueError as e:
        fail(str(e))
    if not written:
        fail("no rare-behaviour answers to export yet", code=1)
    for path in written:
        out.print(f"wrote {path}")
    if score:
        for path in written:
            rare_score(path, spec=rare_spec, name=None, seed=0)


def export(
    suite: SuiteOpt = "wiki",
    split: SplitOpt = "sealed",
    db: DbOpt = None,
    participant: Annotated[list[str] | None, typer.Option("--participant", "-p", help="Only these (repeat).")] = None,
    team: Annotated[bool, typer.Option(help="Also write the pooled 'human-team' predictor.")] = True,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder (default results/human/<suite>).")] = None,
    score: Annotated[bool, typer.Option(help="Score each exported file at once (as `logitpred score`).")] = False,
    rare_spec: RareOpt = None,
) -> None:
    """Export human answers as standard predictions JSONL (one per participant and a team file) for `logitpred score`.

    For a trajectory suite the files are whole-continuation predictions (``log10prob`` per question); with
    --rare-spec, the rare-behaviour answers as ``human-NAME-rare.jsonl`` for `logitpred rare score` (--split unused)."""
    from tasks.paths import results_dir

    if rare_spec:
        return _export_rare(rare_spec, db, participant, team, out_dir, score)

    from ..human.trajectory import TrajectoryGame, is_trajectory_suite
    from .score import score as score_cmd

    s, d = _db(suite, db)
    folder = out_dir or results_dir() / "human" / s.name
    try:
        if is_trajectory_suite(s):
            from ..human.trajectory_export import export as export_trajectories

            written = export_trajectories(d, TrajectoryGame(s, practice_truth=False), split, folder,
                                          names=participant or None, team=team)
        else:
            from ..human.export import export as do_export
            from ..human.game import Game

            written = do_export(d, Game(s), split, folder, names=participant or None, team=team)
    except ValueError as e:
        fail(str(e))
    if not written:
        fail(f"no {split} answers to export yet", code=1)
    for path in written:
        out.print(f"wrote {path}")
    if score:
        for path in written:
            score_cmd(path, suite=suite, split=split, name=None, strict=False, seed=0)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("export")(export)
    app.add_typer(participants_app, name="participants")
