"""The FastAPI app of the human form: login by one-time invitation, the prediction page, its JSON API, an admin page.

Endpoints (all JSON under ``/api``; every POST needs the session's ``X-CSRF-Token`` header):
- ``GET /join/{token}`` shows a confirm button; ``POST /join`` consumes the invitation and sets the session cookie.
- ``GET /`` the form; ``GET /api/me``, ``GET /api/next?split=``, ``GET /api/vocab?q=``, ``GET /api/tokenize?text=``,
  ``POST /api/answer`` (practice answers return feedback), ``GET /api/submissions[/{id}]`` (own only).
- ``GET /admin`` (admin session) with per-participant progress, ``GET /admin/export`` (predictions JSONL).
Sealed answers get no feedback of any kind, and the server never loads sealed truth (see ``game.py``).
For a trajectory suite the page is ``trajectory.html`` and the questions are whole continuations
(``trajectory_api.py``: ``/api/trajectory/next``, ``/api/trajectory/answer``, ``/api/trajectory/answers``);
``/api/next`` and ``/api/answer`` then answer 404 (such a suite asks no next-token question), and the organiser's
page and export show trajectory answers. Given a ``RareGame`` (``rare=``, ``logitpred serve --rare-spec``) the
app serves rare-behaviour questions instead (``rare.py``, ``rare_api.py``: ``/api/rare/next``, ``/api/rare/answer``,
``/api/rare/answers``; page ``rare.html``; no suite, no next-token or trajectory routes). HTTP helpers (origins, strict bodies, security headers): ``web.py``.

Abuse handling: bodies over ``max_body`` bytes get 413 before any parsing (FastAPI's ``max_body_size``); malformed
JSON, numbers or fields get a 422 naming the field; a JSON key, form field or query parameter given twice gets a 422
naming it (bodies are parsed with ``tasks.io.loads_json``, never "the last one wins"); forged or expired sessions 401,
wrong role or CSRF token 403, unknown or foreign ids 404, a second answer 409, too many sealed answers a minute 429.
Nothing is stored unless the whole answer is valid. Leaves out: TLS (run it behind a reverse proxy, with
``secure_cookies`` and ``public_url``).

Cross-site requests: every POST also has its ``Origin`` compared, as scheme, host and port (default ports implied),
with ``public_url`` (the address participants open, ``serve --url``), or, when none is given, with the request's own
scheme and ``Host``. Behind a reverse proxy the ``Host`` the app sees is the proxy's upstream (nginx sends
``127.0.0.1:8000`` by default), so a public deployment needs ``public_url``. Without ``Origin`` the ``Referer`` is
checked the same way (OWASP); with neither (non-browser clients: browsers send ``Origin`` on every cross-origin POST)
the session's CSRF token decides alone. ``Origin: null`` (an opaque origin: a sandboxed frame, a ``data:`` page) is
refused on the JSON API, which the page calls with ``fetch`` and so with its real origin; the login form's POST is a
navigation, for which the browser sends ``null`` under our ``Referrer-Policy: no-referrer``, so there it counts as
absent and the login form token (a ``SameSite=Strict`` double-submit cookie) decides.
"""

import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from predictors.jsonl import json_line
from tasks.suite import SPLITS, Suite

from .db import AlreadyAnswered, DbError, RateLimited, open_db
from .export import participant_predictions, team_predictions
from .game import MAX_CANDIDATES, AnswerError, Game
from .rare import RareGame
from .rare import participant_lines as rare_participant_lines
from .rare import team_lines as rare_team_lines
from .rare_api import add_routes as add_rare_routes
from .rare_api import progress as rare_progress
from .trajectory import TrajectoryGame, is_trajectory_suite
from .trajectory_api import add_routes as add_trajectory_routes
from .trajectory_api import progress as trajectory_progress
from .trajectory_db import participant_rows as trajectory_rows
from .trajectory_export import jsonl, participant_lines, team_lines
from .web import EmptyIn, SecurityHeaders, join_form, json_body, no_repeated_query, show_origin, web_origin

HERE = Path(__file__).parent
COOKIE, JOIN_COOKIE = "logitpred_session", "logitpred_join"


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=200)
    token_id: StrictInt | None = None
    p: float = Field(strict=True, allow_inf_nan=False)  # a JSON number, never a string; range: Game.resolve


class AnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_id: str = Field(min_length=1, max_length=64)
    mode: Literal["list", "quick"] = "list"
    rest: Literal["uniform", "unigram"] = "unigram"
    candidates: list[CandidateIn] = Field(max_length=MAX_CANDIDATES)


def create_app(suite: Suite, *, db_url: str | None = None, sealed_per_minute: int = 20, max_body: int = 16384,
               secure_cookies: bool = False, public_url: str | None = None, game: Game | None = None,
               rare: RareGame | None = None) -> FastAPI:
    """Build the app for one suite; opens (and schema-checks) the database now, so a bad one fails at start-up.

    ``public_url`` is the address participants open (``serve --url``, e.g. ``https://predict.example.org`` behind a
    reverse proxy): POSTs must come from that origin. Without it, from the request's own scheme and ``Host``.
    ``game`` reuses an already built ``Game`` of the same suite (tests and benchmarks start several apps).
    ``rare`` serves rare-behaviour questions (``rare.py``); ``suite`` is then ignored (give None) and the database is
    the reference set's own (``rare.form``).
    Raises ValueError for a ``public_url`` that is not an http(s) address.
    """
    public_origin = None
    if public_url is not None:
        public_origin = web_origin(public_url)
        if public_origin is None:
            raise ValueError(f"public URL {public_url!r}: give the address participants open, as "
                             "https://host or https://host:port")
    if rare is not None:  # rare-behaviour questions only: no suite, no next-token game
        suite, game, traj = rare.form, None, None
        db = open_db(db_url, suite)
    else:
        game, db = game or Game(suite), open_db(db_url, suite)
        # a trajectory suite asks whole-continuation questions instead of next-token ones (trajectory.py)
        traj = TrajectoryGame(suite) if is_trajectory_suite(suite) else None
    # FastAPI's own limit: 413 before parsing, for declared lengths and chunked bodies alike
    app = FastAPI(title="logitpred human form", docs_url=None, redoc_url=None, openapi_url=None,
                  max_body_size=max_body, dependencies=[Depends(no_repeated_query)])
    app.state.public_origin = public_origin
    app.state.game, app.state.db, app.state.trajectory, app.state.rare = game, db, traj, rare
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    pages = Jinja2Templates(directory=HERE / "templates")
    pages.env.filters["utc"] = lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return pages.TemplateResponse(request, name, {"suite": suite.name, **context}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 413:
            exc = StarletteHTTPException(413, f"request body over {max_body} bytes: send a smaller answer")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"][1:]).lstrip(".")
            parts.append(f"{loc or 'body'}: {err['msg']}")
        return JSONResponse({"detail": "; ".join(parts)}, 422)

    def session(request: Request) -> dict[str, Any]:
        token = request.cookies.get(COOKIE)
        s = db.session(token) if token else None
        if s is None:
            raise HTTPException(401, "not logged in: open the invitation link from the organiser")
        return s

    def participant(s: Annotated[dict, Depends(session)]) -> dict[str, Any]:
        if s["role"] != "participant":
            raise HTTPException(403, "this page is for participants; the organiser uses /admin")
        return s

    def admin(s: Annotated[dict, Depends(session)]) -> dict[str, Any]:
        if s["role"] != "admin":
            raise HTTPException(403, "organiser only")
        return s

    def same_origin(request: Request, *, opaque_ok: bool) -> None:
        """Refuse a request whose ``Origin`` (or, without one, ``Referer``) is not this server's (module docstring)."""
        origin = request.headers.get("origin")
        if origin is not None and origin.strip() == "null":
            if not opaque_ok:
                raise HTTPException(403, "cross-site request from an opaque origin (Origin: null) refused")
            origin = None
        source = origin if origin is not None else request.headers.get("referer")
        if source is None:
            return  # a non-browser client: the CSRF token decides
        expected = public_origin or web_origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
        if expected is None or web_origin(source) != expected:
            what = "Origin" if origin is not None else "Referer"
            mine = show_origin(expected) if expected else "unknown (no Host header)"
            raise HTTPException(403, f"cross-site request refused: {what} {source[:200]!r} is not this server's "
                                     f"address {mine}" + ("" if public_origin else " (behind a proxy, give serve --url)"))

    def csrf(request: Request, s: Annotated[dict, Depends(participant)]) -> dict[str, Any]:
        same_origin(request, opaque_ok=False)
        if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), s["csrf"]):
            raise HTTPException(403, "missing or wrong X-CSRF-Token: reload the page")
        return s

    Participant = Annotated[dict, Depends(participant)]

    # --- login -------------------------------------------------------------------------------------------------------
    @app.get("/join/{token}")
    def join_page(request: Request, token: str) -> Response:
        state = db.invitation_state(token)
        if state != "valid":
            msg = ("This invitation link was already used. Ask the organiser for a new one." if state == "used"
                   else "Unknown invitation link. Check that you copied all of it.")
            return page(request, "message.html", 410 if state == "used" else 404, title="Cannot log in", message=msg)
        form_token = secrets.token_urlsafe(24)
        resp = page(request, "join.html", token=token, form_token=form_token)
        resp.set_cookie(JOIN_COOKIE, form_token, httponly=True, samesite="strict", secure=secure_cookies, max_age=3600)
        return resp

    @app.post("/join")
    def join(request: Request, form: Annotated[dict, Depends(join_form)]) -> Response:
        token, form_token = form["token"], form["form_token"]
        try:
            same_origin(request, opaque_ok=True)
        except HTTPException as e:
            return page(request, "message.html", 403, title="Cannot log in", message=str(e.detail))
        if not hmac.compare_digest(request.cookies.get(JOIN_COOKIE, ""), form_token):
            return page(request, "message.html", 403, title="Cannot log in",
                        message="The login form expired or came from another site. Open your invitation link again.")
        try:
            cookie, _csrf, role = db.redeem(token)
        except DbError as e:
            used = "already used" in str(e)
            return page(request, "message.html", 410 if used else 404, title="Cannot log in", message=str(e))
        resp = RedirectResponse("/admin" if role == "admin" else "/", 303)
        resp.set_cookie(COOKIE, cookie, httponly=True, samesite="lax", secure=secure_cookies, max_age=30 * 24 * 3600)
        resp.delete_cookie(JOIN_COOKIE)
        return resp

    @app.post("/api/logout")
    def logout(request: Request, _s: Annotated[dict, Depends(csrf)],
               _body: Annotated[EmptyIn, json_body(EmptyIn, optional=True)]) -> Response:
        db.end_session(request.cookies.get(COOKIE, ""))
        resp = JSONResponse({"logged_out": True})
        resp.delete_cookie(COOKIE)
        return resp

    # --- the form ----------------------------------------------------------------------------------------------------
    @app.get("/")
    def home(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        s = db.session(token) if token else None
        if s is None:
            return page(request, "message.html", 401, title="Not logged in",
                        message="Open the invitation link the organiser gave you to log in.")
        if s["role"] == "admin":
            return RedirectResponse("/admin", 303)
        form = "rare.html" if rare else "trajectory.html" if traj else "form.html"
        return FileResponse(HERE / "static" / form, headers={"cache-control": "no-store"})

    def progress(pid: int) -> dict[str, Any]:
        out = {}
        for split in SPLITS:
            with db.read() as conn:
                out[split] = {**db.running(conn, pid, split), "total": len(game.prompts[split])}
        out["sealed"].pop("mean_kl_nats"), out["sealed"].pop("mean_ce_nats")  # never computed; keep the shape honest
        return out

    @app.get("/api/me")
    def me(s: Participant) -> dict[str, Any]:
        pid = s["participant_id"]
        return {"name": s["name"], "csrf": s["csrf"], "suite": suite.name, "suite_version": suite.version,
                "sealed_per_minute": sealed_per_minute,
                "questions": "rare" if rare else "trajectory" if traj else "next_token",
                "progress": rare_progress(db, rare, pid) if rare else trajectory_progress(db, traj, pid) if traj
                else progress(pid)}

    def next_token_only() -> None:
        if rare:
            raise HTTPException(404, "this form asks rare-behaviour questions: use /api/rare/next and /api/rare/answer "
                                     "(reload the page)")
        if traj:
            raise HTTPException(404, f"suite {suite.name!r} asks whole-continuation questions, not next-token ones: "
                                     "use /api/trajectory/next and /api/trajectory/answer (reload the page)")

    @app.get("/api/next")
    def next_prompt(s: Participant, split: Literal["practice", "sealed"] = "practice") -> dict[str, Any]:
        next_token_only()
        found = game.next_prompt(split, db.answered(s["participant_id"], split))
        if found is None:
            return {"done": True, "split": split, "total": len(game.prompts[split])}
        i, p = found
        return {"done": False, "split": split, "index": i, "total": len(game.prompts[split]),
                "prompt": {"id": p.id, "text": p.text}}

    @app.get("/api/vocab")
    def vocab(_s: Annotated[dict, Depends(session)], q: Annotated[str, Query(max_length=100)] = "",
              limit: Annotated[int, Query(ge=1, le=50)] = 12) -> dict[str, Any]:
        if game is None:
            raise HTTPException(404, "no vocabulary in rare-behaviour mode")
        return {"q": q, "tokens": game.complete(q, limit)}

    @app.get("/api/tokenize")
    def tokenize(_s: Annotated[dict, Depends(session)], text: Annotated[str, Query(max_length=200)] = "") -> dict:
        if game is None:
            raise HTTPException(404, "no tokenizer in rare-behaviour mode")
        return game.read(text)  # NFC text, its tokens, and a warning when the first token is not exactly the text

    @app.post("/api/answer")
    def answer(s: Annotated[dict, Depends(csrf)], body: Annotated[AnswerIn, json_body(AnswerIn)]) -> dict[str, Any]:
        next_token_only()
        try:
            split, _prompt = game.prompt(body.prompt_id)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from e
        if body.mode == "quick" and len(body.candidates) != 1:
            raise HTTPException(422, "quick mode takes exactly one guess and its confidence")
        try:
            cands = game.resolve([c.model_dump() for c in body.candidates])
            _pred, q = game.check(body.prompt_id, cands, body.rest)
        except AnswerError as e:
            raise HTTPException(422, str(e)) from e
        fb = game.feedback(body.prompt_id, q) if split == "practice" else None
        try:
            sid, running = db.add_submission(
                s["participant_id"], body.prompt_id, split, body.mode, body.rest, [c.to_json() for c in cands],
                fb["kl_nats"] if fb else None, fb["ce_nats"] if fb else None, sealed_per_minute=sealed_per_minute)
        except AlreadyAnswered as e:
            raise HTTPException(409, str(e)) from e
        except RateLimited as e:
            raise HTTPException(429, str(e), headers={"retry-after": str(e.retry_after)}) from e
        out = {"accepted": True, "submission_id": sid, "prompt_id": body.prompt_id, "split": split,
               "candidates": [{**c.to_json(), "token": game.vocab.text[c.token_id], "warning": c.warning}
                              for c in cands],
               "rest": body.rest, "answered": running["answered"], "total": len(game.prompts[split])}
        if fb:  # practice only
            out["feedback"], out["running"] = fb, running
        return out

    def public(row: dict[str, Any]) -> dict[str, Any]:
        keep = ("id", "prompt_id", "split", "mode", "rest", "created", "kl", "ce")
        cands = [{**c, "token": game.vocab.text[c["token_id"]]} for c in row["candidates"]]
        return {**{k: row[k] for k in keep}, "candidates": cands}

    @app.get("/api/submissions")
    def my_submissions(s: Participant) -> dict[str, Any]:
        return {"submissions": [public(r) for r in db.list_submissions(s["participant_id"])]}

    @app.get("/api/submissions/{sid}")
    def my_submission(sid: int, s: Participant) -> dict[str, Any]:
        rows = [r for r in db.list_submissions(s["participant_id"]) if r["id"] == sid]
        if not rows:  # someone else's id looks exactly like a missing one
            raise HTTPException(404, f"no submission {sid} of yours")
        return public(rows[0])

    # --- organiser ---------------------------------------------------------------------------------------------------
    @app.get("/admin")
    def admin_page(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        s = db.session(token) if token else None
        if s is None or s["role"] != "admin":
            return page(request, "message.html", 401 if s is None else 403, title="Organiser only",
                        message="Log in with an admin link from `logitpred participants admin-link`.")
        if rare:
            return page(request, "admin.html", trajectory=True, rare=True, people=trajectory_rows(db),
                        totals={"practice": len(rare.questions), "sealed": 0})
        if traj:
            return page(request, "admin.html", trajectory=True, people=trajectory_rows(db),
                        totals={k: len(v) for k, v in traj.questions.items()})
        return page(request, "admin.html", people=db.participant_rows(), totals={k: len(v) for k, v in
                                                                                game.prompts.items()})

    @app.get("/admin/export")
    def admin_export(_s: Annotated[dict, Depends(admin)], split: Literal["practice", "sealed"] = "sealed",
                     participant: str = "team") -> PlainTextResponse:
        if participant != "team" and participant not in {r["name"] for r in db.participant_rows()}:
            raise HTTPException(404, f"no participant {participant!r}")
        if rare:  # rare questions are all practice-like: one file whatever the split (rare.py)
            text = jsonl(rare_team_lines(db, rare) if participant == "team"
                         else rare_participant_lines(db, rare, participant))
        elif traj:  # whole-continuation predictions (trajectory_export.py)
            text = jsonl(team_lines(db, traj, split) if participant == "team"
                         else participant_lines(db, traj, split, participant))
        else:
            preds = (team_predictions(db, game, split) if participant == "team"
                     else participant_predictions(db, game, split, participant))
            text = "".join(json_line(p, game.vocab) for p in preds)  # exactly as write_jsonl writes: it reads back
        name = f"human-{participant}-{split}.jsonl"
        return PlainTextResponse(text, media_type="application/x-ndjson",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "suite": suite.name}

    if rare:
        add_rare_routes(app, rare, db, participant=participant, csrf=csrf)
    if traj:
        add_trajectory_routes(app, traj, db, participant=participant, csrf=csrf, sealed_per_minute=sealed_per_minute)
    app.state.close = db.dispose
    return app

