"""API tests of the human form: FastAPI's TestClient against a real database and the real tiny suite (real SmolLM2
truth); the durability test runs a real uvicorn subprocess and kills it with SIGKILL. Every test that stores answers
runs twice, on a new SQLite file and on a new PostgreSQL database (fixture ``human_db_url`` in tests/conftest.py;
`make test` starts the PostgreSQL server).

Scores shown as practice feedback are checked against scipy (``scipy.special.rel_entr``) on distributions built here
from the answer, independently of ``predictors.format.densify``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.special
import sqlalchemy as sa
from fastapi.testclient import TestClient

from evals.human.app import create_app
from evals.human.client import FORM_TOKEN, Participant
from evals.human.client import serve as serve_subprocess
from evals.human.db import DbError, open_db
from evals.human.export import export
from evals.human.game import Game
from evals.records import read_runs


@pytest.fixture(scope="module")
def game(tiny_suite):
    return Game(tiny_suite)


@pytest.fixture
def app(tiny_suite, game, human_db_url):
    """The app on a fresh database: each test that uses it runs on SQLite and on PostgreSQL (tests/conftest.py)."""
    a = create_app(tiny_suite, db_url=human_db_url, sealed_per_minute=1000, game=game)
    yield a
    a.state.close()


def login(client: TestClient, token: str) -> str:
    page = client.get(f"/join/{token}")
    assert page.status_code == 200
    r = client.post("/join", data={"token": token, "form_token": FORM_TOKEN.search(page.text).group(1)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.get("/api/me").json()["csrf"] if r.headers["location"] == "/" else ""


def participant(app, name: str) -> tuple[TestClient, dict]:
    c = TestClient(app)
    csrf = login(c, app.state.db.add_participant(name))
    return c, {"x-csrf-token": csrf}


def stored(app) -> int:
    return len(app.state.db.list_submissions())


def reference_q(suite, cands: list[tuple[int, float]], rest: str) -> np.ndarray:
    """The prediction's full distribution built directly: named mass as given, the rest spread by the rule."""
    V = suite.vocab_size
    w = suite.background.copy() if rest == "unigram" else np.ones(V)
    named = np.array([t for t, _ in cands])
    w[named] = 0.0
    q = (1.0 - sum(p for _, p in cands)) * w / w.sum()
    q[named] = [p for _, p in cands]
    return q


def test_login_is_one_time_and_checks_the_form_token(app):
    db = app.state.db
    token = db.add_participant("alice")
    c = TestClient(app)
    page = c.get(f"/join/{token}")
    assert page.status_code == 200 and "Log in" in page.text
    form_token = FORM_TOKEN.search(page.text).group(1)
    bad = c.post("/join", data={"token": token, "form_token": "forged"}, follow_redirects=False)
    assert bad.status_code == 403  # login CSRF: the form token must match the cookie set with the page
    assert db.invitation_state(token) == "valid"
    ok = c.post("/join", data={"token": token, "form_token": form_token}, follow_redirects=False)
    assert ok.status_code == 303 and c.get("/api/me").json()["name"] == "alice"
    other = TestClient(app)  # replaying the link from another browser
    assert other.get(f"/join/{token}").status_code == 410
    other.cookies.set("logitpred_join", "x")
    replay = other.post("/join", data={"token": token, "form_token": "x"}, follow_redirects=False)
    assert replay.status_code == 410 and "already used" in replay.text
    assert other.get("/api/me").status_code == 401
    assert other.get("/join/not-a-real-token").status_code == 404
    other.cookies.set("logitpred_session", "forged-session-token")
    assert other.get("/api/me").status_code == 401
    # a new link for the same person works, and the old unused ones stop working
    first, second = db.new_link("alice"), db.new_link("alice")
    assert db.invitation_state(first) == "used" and db.invitation_state(second) == "valid"
    first, second = db.admin_link(), db.admin_link()  # one live organiser link at a time
    assert db.invitation_state(first) == "used" and db.invitation_state(second) == "valid"
    with pytest.raises(DbError, match="other than 'team'"):
        db.add_participant("team")  # the pooled export is called team


def test_practice_feedback_matches_scipy(app, tiny_suite):
    c, h = participant(app, "alice")
    nxt = c.get("/api/next", params={"split": "practice"}).json()
    pid = nxt["prompt"]["id"]
    assert nxt["index"] == 0 and nxt["prompt"]["text"] == tiny_suite.prompts("practice")[0].text
    r = c.post("/api/answer", headers=h, json={"prompt_id": pid, "rest": "unigram", "candidates": [
        {"text": " the one", "p": 0.3}, {"text": " emphasis", "token_id": 8154, "p": 0.25}]})
    assert r.status_code == 200, r.text
    out = r.json()
    the = app.state.game.tokenize(" the")[0]["id"]
    assert [c["token_id"] for c in out["candidates"]] == [the, 8154]  # first token of " the one" counts
    logp = tiny_suite.truth(pid).astype(np.float64)
    q = reference_q(tiny_suite, [(the, 0.3), (8154, 0.25)], "unigram")
    realized = tiny_suite.prompts("practice")[0].next_token_id
    fb = out["feedback"]
    # rel_entr does not renormalize p (float32 truth sums to 1 only within ~2e-5), like the harness's metric
    assert fb["kl_nats"] == pytest.approx(scipy.special.rel_entr(np.exp(logp), q).sum(), rel=1e-9)
    assert fb["ce_nats"] == pytest.approx(-np.log(q[realized]), rel=1e-9)
    assert [t["id"] for t in fb["top"]] == list(np.argsort(-logp, kind="stable")[:10])
    assert fb["top"][0]["p"] == pytest.approx(np.exp(logp).max(), rel=1e-6)
    assert fb["realized"]["id"] == realized
    assert out["running"] == {"answered": 1, "mean_kl_nats": pytest.approx(fb["kl_nats"]),
                              "mean_ce_nats": pytest.approx(fb["ce_nats"])}
    # a second answer: the running score is the mean of both
    pid2 = c.get("/api/next", params={"split": "practice"}).json()["prompt"]["id"]
    r2 = c.post("/api/answer", headers=h, json={"prompt_id": pid2, "mode": "quick", "rest": "uniform",
                                                "candidates": [{"text": " and", "p": 0.5}]}).json()
    assert r2["running"]["mean_kl_nats"] == pytest.approx((fb["kl_nats"] + r2["feedback"]["kl_nats"]) / 2)
    assert stored(app) == 2


def test_sealed_answers_once_without_feedback(app):
    c, h = participant(app, "alice")
    pid = c.get("/api/next", params={"split": "sealed"}).json()["prompt"]["id"]
    body = {"prompt_id": pid, "candidates": [{"text": " of", "p": 0.4}]}
    r = c.post("/api/answer", headers=h, json=body)
    assert r.status_code == 200
    assert set(r.json()) == {"accepted", "submission_id", "prompt_id", "split", "candidates", "rest", "answered", "total"}
    again = c.post("/api/answer", headers=h, json=body)
    assert again.status_code == 409 and "already answered" in again.json()["detail"]
    assert stored(app) == 1
    assert c.get("/api/next", params={"split": "sealed"}).json()["index"] == 1
    assert "mean_kl_nats" not in c.get("/api/me").json()["progress"]["sealed"]


def _truth_values(suite, split: str) -> tuple[list[float], set[int], list[str]]:
    """Sealed (or practice) truth as it could leak: top-10 and realized probabilities and log-probs, their token ids,
    and the probabilities as a page would print them."""
    _, logp, nxt = suite.truth_split(split)
    values, ids, texts = [], set(), []
    for row, n in zip(logp, nxt, strict=True):
        for t in [*np.argsort(-row, kind="stable")[:10], int(n)]:
            p = float(np.exp(row[t]))
            values += [p, float(row[t])]
            ids.add(int(t))
            texts += [repr(p), f"{100 * p:.2f}%"] + ([f"{p:.4f}"] if p >= 0.01 else [])
    return values, ids, texts


def _leaves(x, key="", parent=None):
    """(key, value, enclosing object) of every scalar in parsed JSON, skipping timestamps (not truth; could match a
    value by chance)."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k != "created":
                yield from _leaves(v, k, x)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v, key, parent)
    else:
        yield key, x, parent or {}


def _leaks(bodies: list[tuple[str, str]], values: list[float], ids: set[int], texts: list[str]) -> list[str]:
    found = []
    for where, body in bodies:
        try:
            obj = json.loads(body)
        except ValueError:  # HTML, JavaScript: look for the numbers as a page would print them
            found += [f"{where}: {t}" for t in texts if t in body]
            continue
        for key, x, parent in _leaves(obj):
            if isinstance(x, bool) or x is None:
                continue
            # a token id: "token_id", or "id" of a token object ({"id", "text", "raw"}), not a submission's own "id"
            is_token = key == "token_id" or (key == "id" and "text" in parent)
            if isinstance(x, int) and is_token and x in ids:
                found.append(f"{where}: token id {x} under {key!r}")
            elif isinstance(x, float) and any(abs(x - v) <= 1e-7 * max(1e-3, abs(v)) for v in values):
                found.append(f"{where}: value {x} under {key!r}")
    return found


def test_no_endpoint_returns_sealed_truth(app, tiny_suite):
    """Every route is called (the test fails if a new one is not), sealed prompts answered in every way the API
    allows; no response may contain a sealed truth value. The same check does find practice truth in practice
    feedback, so it can fail."""
    db = app.state.db
    values, ids, texts = _truth_values(tiny_suite, "sealed")
    c, h = participant(app, "leaky")
    admin = TestClient(app)
    login(admin, db.admin_link())
    safe = app.state.game.complete("Paragu")
    assert safe and not {t["id"] for t in safe} & ids  # precondition: the guesses below are not sealed truth tokens
    bodies, covered = [], set()

    def call(client, method, template, path=None, **kw):
        covered.add((method, template))
        r = client.request(method, path or template, **kw)
        bodies.append((f"{method} {path or template} -> {r.status_code}", r.text))
        return r

    sids = []
    for n, p in enumerate(tiny_suite.prompts("sealed")):
        call(c, "GET", "/api/next", params={"split": "sealed"})
        body = {"prompt_id": p.id, "mode": "quick" if n % 2 else "list", "rest": ["uniform", "unigram"][n % 2],
                "candidates": [{"text": safe[0]["text"], "token_id": safe[0]["id"], "p": 0.2 + 0.1 * n}]}
        r = call(c, "POST", "/api/answer", json=body, headers=h)
        assert r.status_code == 200
        sids.append(r.json()["submission_id"])
        call(c, "POST", "/api/answer", json=body, headers=h)  # 409
        call(c, "POST", "/api/answer", json={**body, "candidates": [{"text": " x", "p": 2}]}, headers=h)  # 422
    call(c, "GET", "/api/next", params={"split": "sealed"})  # done
    for sid in sids:
        call(c, "GET", "/api/submissions/{sid}", f"/api/submissions/{sid}")
    call(c, "GET", "/api/submissions")
    call(c, "GET", "/api/me")
    call(c, "GET", "/api/vocab", params={"q": "Paragu"})
    call(c, "GET", "/api/tokenize", params={"text": safe[0]["text"]})
    call(c, "GET", "/")
    call(admin, "GET", "/")
    call(admin, "GET", "/admin")
    for who in ("leaky", "team"):
        call(admin, "GET", "/admin/export", params={"split": "sealed", "participant": who})
    fresh = db.admin_link()
    call(TestClient(app), "GET", "/join/{token}", f"/join/{fresh}")
    call(TestClient(app), "POST", "/join", data={"token": fresh, "form_token": "x"})
    call(c, "GET", "/healthz")
    call(c, "GET", "/favicon.ico")
    call(c, "GET", "/static", "/static/form.js")
    call(c, "POST", "/api/logout", headers=h)
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", {"GET"}) - {"HEAD"}}
    assert routes == covered, f"routes not covered by this test: {routes - covered}"
    assert _leaks(bodies, values, ids, texts) == []

    # the detector is not blind: practice feedback does contain practice truth
    pv, pi, pt = _truth_values(tiny_suite, "practice")
    c2, h2 = participant(app, "control")
    pid = c2.get("/api/next", params={"split": "practice"}).json()["prompt"]["id"]
    r = c2.post("/api/answer", headers=h2, json={"prompt_id": pid, "candidates": [{"text": " of", "p": 0.1}]})
    assert len(_leaks([("practice", r.text)], pv, pi, pt)) >= 11


BAD = [
    ("unknown token id", {"candidates": [{"text": " a", "token_id": 10_000_000, "p": 0.5}]}, 422, "outside"),
    ("token id / text mismatch", {"candidates": [{"text": " dog", "token_id": 5, "p": 0.5}]}, 422, "pick it again"),
    ("number as a string", {"candidates": [{"text": " a", "p": "0.5"}]}, 422, "candidates[0].p"),
    ("probability over 1", {"candidates": [{"text": " a", "p": 1.5}]}, 422, "at most 100%"),
    ("negative probability", {"candidates": [{"text": " a", "p": -0.1}]}, 422, "above 0%"),
    ("zero probability", {"candidates": [{"text": " a", "p": 0}]}, 422, "above 0%"),
    ("total over 100%", {"candidates": [{"text": " a", "p": 0.6}, {"text": " b", "p": 0.5}]}, 422, "110.0%"),
    ("same first token twice", {"candidates": [{"text": " the", "p": 0.2}, {"text": " the end", "p": 0.2}]}, 422,
     "merge"),
    ("no candidates", {"candidates": []}, 422, "at least one"),
    ("too many candidates", {"candidates": [{"text": f" w{i}", "p": 0.01} for i in range(21)]}, 422, "candidates"),
    ("unknown field", {"participant_id": 1, "candidates": [{"text": " a", "p": 0.5}]}, 422, "participant_id"),
    ("bad rest rule", {"rest": "zipf", "candidates": [{"text": " a", "p": 0.5}]}, 422, "rest"),
    ("quick mode with two guesses", {"mode": "quick", "candidates": [{"text": " a", "p": 0.2}, {"text": " b", "p": 0.2}]},
     422, "quick"),
    ("unknown prompt id", {"prompt_id": "tiny-000000000000", "candidates": [{"text": " a", "p": 0.5}]}, 404, "unknown"),
    ("empty text", {"candidates": [{"text": "", "p": 0.5}]}, 422, "text"),
]


@pytest.mark.parametrize("what,change,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_answers_get_a_clear_4xx_and_store_nothing(app, tiny_suite, what, change, status, message):
    c, h = participant(app, "alice")
    body = {"prompt_id": tiny_suite.prompts("sealed")[0].id, **change}
    r = c.post("/api/answer", headers=h, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert stored(app) == 0


def test_transport_and_session_abuse_is_refused(app, tiny_suite):
    c, h = participant(app, "alice")
    pid = tiny_suite.prompts("practice")[0].id
    good = json.dumps({"prompt_id": pid, "candidates": [{"text": " a", "p": 0.5}]})
    post = lambda **kw: c.post("/api/answer", **kw)  # noqa: E731
    json_h = {**h, "content-type": "application/json"}
    cases = [
        ("NaN", post(content=good.replace("0.5", "NaN"), headers=json_h), 422),
        ("malformed JSON", post(content=good[:-3], headers=json_h), 422),
        ("oversized body", post(content=good[:-1] + ', "x": "' + "a" * 20000 + '"}', headers=json_h), 413),
        ("oversized chunked body", post(content=iter([good.encode()[:-1], b' ,"x": "', b"a" * 20000, b'"}']),
                                        headers=json_h), 413),
        ("no CSRF header", post(content=good, headers={"content-type": "application/json"}), 403),
        ("forged CSRF header", post(content=good, headers={**json_h, "x-csrf-token": "forged"}), 403),
        ("cross-site origin", post(content=good, headers={**json_h, "origin": "http://evil.example"}), 403),
        ("no session", TestClient(app).post("/api/answer", content=good, headers=json_h), 401),
        ("participant on admin export", c.get("/admin/export"), 403),
    ]
    for what, r, status in cases:
        assert r.status_code == status, f"{what}: {r.status_code} {r.text[:200]}"
        # FastAPI answers a declared over-long body in plain text ("Content Too Large") before any route runs
        assert (r.json()["detail"] if r.headers["content-type"].startswith("application/json")
                else r.text == "Content Too Large"), what
    assert stored(app) == 0
    assert c.post("/api/answer", content=good, headers=json_h).status_code == 200  # the same request, done right
    # another participant's submission id looks exactly like a missing one
    sid = c.get("/api/submissions").json()["submissions"][0]["id"]
    b, _ = participant(app, "bob")
    assert b.get(f"/api/submissions/{sid}").status_code == 404
    assert b.get("/api/submissions").json()["submissions"] == []
    assert c.get(f"/api/submissions/{sid}").status_code == 200
    assert c.get("/admin").status_code == 403


def test_sealed_rate_limit(tiny_suite, game, human_db_url):
    app = create_app(tiny_suite, db_url=human_db_url, sealed_per_minute=2, game=game)
    c, h = participant(app, "alice")
    codes = [c.post("/api/answer", headers=h, json={"prompt_id": p.id, "candidates": [{"text": " a", "p": 0.5}]})
             for p in tiny_suite.prompts("sealed")[:3]]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1 and "at most 2" in codes[2].json()["detail"]
    assert stored(app) == 2
    practice = c.post("/api/answer", headers=h, json={"prompt_id": tiny_suite.prompts("practice")[0].id,
                                                      "candidates": [{"text": " a", "p": 0.5}]})
    assert practice.status_code == 200  # the limit is on sealed answers only
    app.state.close()


def test_resume_after_restart(tiny_suite, game, human_db_url):
    url = human_db_url
    first = create_app(tiny_suite, db_url=url, game=game)
    c, h = participant(first, "alice")
    for p in tiny_suite.prompts("practice")[:2]:
        assert c.post("/api/answer", headers=h, json={"prompt_id": p.id,
                                                      "candidates": [{"text": " a", "p": 0.5}]}).status_code == 200
    cookie = c.cookies.get("logitpred_session")
    first.state.close()
    second = create_app(tiny_suite, db_url=url, game=game)  # a restarted server, the same browser cookie
    again = TestClient(second)
    again.cookies.set("logitpred_session", cookie)
    nxt = again.get("/api/next", params={"split": "practice"}).json()
    assert nxt["index"] == 2 and nxt["prompt"]["id"] == tiny_suite.prompts("practice")[2].id
    assert again.get("/api/me").json()["progress"]["practice"]["answered"] == 2
    second.state.close()


def sql(url: str, statement: str) -> list[tuple]:
    """Run one statement on the database at ``url`` with a connection of its own, outside the app; committed."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def test_schema_version_and_suite_are_checked(tiny_suite, human_db_url):
    open_db(human_db_url, tiny_suite).dispose()
    sql(human_db_url, "UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(DbError, match="schema version '0'"):
        open_db(human_db_url, tiny_suite)
    sql(human_db_url, "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    sql(human_db_url, "UPDATE meta SET value = 'wiki' WHERE key = 'suite'")
    with pytest.raises(DbError, match="holds answers for suite 'wiki'"):
        open_db(human_db_url, tiny_suite)


def test_export_scores_like_any_predictor(app, tiny_suite, tmp_path, monkeypatch):
    """Per-participant files and the team pool score, through ``logitpred score``, to what scipy gives on
    distributions built here; the team file is exact both with one shared rest rule and with mixed rules."""
    from typer.testing import CliRunner

    from evals.cli import app as cli

    results = tmp_path / "results"  # not the session's results: other tests read that leaderboard
    monkeypatch.setenv("LOGITPRED_RESULTS", str(results))
    sealed = tiny_suite.prompts("sealed")
    game = app.state.game
    answers = {  # participant -> prompt index -> (candidates, rest)
        "alice": {0: ([(" the", 0.4), (" a", 0.2)], "unigram"), 1: ([(" of", 0.5)], "unigram"),
                  2: ([(" and", 0.3)], "uniform")},
        "bob": {0: ([(" the", 0.1), (" in", 0.3)], "unigram"), 2: ([(" to", 0.6)], "unigram")},
    }
    qs: dict[str, dict[int, np.ndarray]] = {}
    for name, items in answers.items():
        c, h = participant(app, name)
        for i, (cands, rest) in items.items():
            body = {"prompt_id": sealed[i].id, "rest": rest, "candidates": [{"text": t, "p": p} for t, p in cands]}
            assert c.post("/api/answer", headers=h, json=body).status_code == 200
            ids = [(game.tokenize(t)[0]["id"], p) for t, p in cands]
            qs.setdefault(name, {})[i] = reference_q(tiny_suite, ids, rest)
    files = export(app.state.db, game, "sealed", tmp_path / "out")
    assert sorted(f.name for f in files) == ["human-alice-sealed.jsonl", "human-bob-sealed.jsonl",
                                              "human-team-sealed.jsonl"]
    team_lines = [json.loads(x) for x in (tmp_path / "out" / "human-team-sealed.jsonl").read_text().splitlines()]
    assert ["top" in x for x in team_lines] == [True, True, False]  # prompt 2 mixes rules: a full vector
    _, logp, _ = tiny_suite.truth_split("sealed")
    expect = {"human:alice": {i: q for i, q in qs["alice"].items()}, "human:bob": qs["bob"],
              "human-team": {i: np.mean([qs[n][i] for n in qs if i in qs[n]], axis=0) for i in (0, 1, 2)}}
    runner = CliRunner()
    for f in files:
        res = runner.invoke(cli, ["score", str(f), "--suite", "tiny", "--split", "sealed"])
        assert res.exit_code == 0, res.output
    runs = {r["predictor"]["label"]: r for r in read_runs(results)}
    assert set(runs) == set(expect)
    for label, summary in runs.items():
        per = dict(pd.read_csv(Path(summary["_dir"]) / "per_prompt.csv")[["prompt_id", "kl_nats"]].to_numpy())
        assert summary["n_scored"] == len(expect[label]) and summary["predictor"]["approved"] is True
        for i, q in expect[label].items():
            ref = scipy.special.rel_entr(np.exp(logp[i].astype(np.float64)), q).sum()
            tol = 1e-4 if label == "human-team" and i == 2 else 1e-9  # the full vector is stored as float32
            assert per[sealed[i].id] == pytest.approx(ref, rel=tol), (label, i)


def test_cli_invites_lists_and_exports(tiny_suite, game, tmp_path, monkeypatch, human_db_url):
    from typer.testing import CliRunner

    from evals.cli import app as cli

    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    url = human_db_url
    runner = CliRunner()
    res = runner.invoke(cli, ["participants", "add", "carol", "--suite", "tiny", "--db", url, "--url", "http://x"])
    assert res.exit_code == 0, res.output
    token = res.output.strip().split("http://x/join/")[1]
    again = runner.invoke(cli, ["participants", "add", "carol", "--suite", "tiny", "--db", url])
    assert again.exit_code == 2 and "exists" in again.output
    bad = runner.invoke(cli, ["participants", "add", "no spaces", "--suite", "tiny", "--db", url])
    assert bad.exit_code == 2 and "participant name" in bad.output
    app = create_app(tiny_suite, db_url=url, game=game)
    c = TestClient(app)
    h = {"x-csrf-token": login(c, token)}
    assert c.post("/api/answer", headers=h, json={"prompt_id": tiny_suite.prompts("practice")[0].id,
                                                  "candidates": [{"text": " a", "p": 0.5}]}).status_code == 200
    listing = runner.invoke(cli, ["participants", "list", "--suite", "tiny", "--db", url])
    assert "carol" in listing.output and "1/6" in listing.output
    empty = runner.invoke(cli, ["export", "--suite", "tiny", "--db", url, "--split", "sealed", "--out", str(tmp_path)])
    assert empty.exit_code == 1 and "no sealed answers" in empty.output
    done = runner.invoke(cli, ["export", "--suite", "tiny", "--db", url, "--split", "practice", "--out",
                               str(tmp_path), "--score"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "human-carol-practice.jsonl").is_file() and "human:carol" in done.output
    app.state.close()


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_answer(tiny_suite, human_db_url):
    """Real uvicorn subprocess, 8 participants answering concurrently; SIGKILL mid-stream; every answer the server
    acknowledged is in the database afterwards, and a restarted server resumes each participant where they were.
    On SQLite and on PostgreSQL (the database itself keeps running; what is tested is that the server acknowledges
    only committed answers)."""
    url = human_db_url
    db = open_db(url, tiny_suite)
    tokens = {f"p{i}": db.add_participant(f"p{i}") for i in range(8)}
    db.dispose()
    prompts = [p.id for s in ("practice", "sealed") for p in tiny_suite.prompts(s)]
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    with serve_subprocess("tiny", url, options=("--sealed-per-minute", "100000")) as (base, proc):
        people = {n: Participant(base, t) for n, t in tokens.items()}

        def work(name: str) -> None:
            for pid in prompts:
                try:
                    r = people[name].answer(pid, [{"text": " the", "p": 0.3}])
                except Exception:  # the server is gone
                    return
                if r.status_code == 200:
                    with lock:
                        acked.append((name, pid))

        threads = [threading.Thread(target=work, args=(n,)) for n in people]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for t in threads:
            t.join()
        for p in people.values():
            p.close()
    assert 30 <= len(acked) < len(prompts) * len(tokens), "the kill must land while answers are still coming"
    rows = set(sql(url, "SELECT p.name, s.prompt_id FROM submissions s JOIN participants p ON p.id = s.participant_id"))
    assert set(acked) <= rows
    with serve_subprocess("tiny", url) as (base, _):
        fresh = Participant(base, open_db(url, tiny_suite).new_link("p0"))
        done = {pid for n, pid in rows if n == "p0"}
        nxt = fresh.next("practice")
        practice = [p.id for p in tiny_suite.prompts("practice")]
        assert nxt.get("prompt", {}).get("id") == next((p for p in practice if p not in done), None)
        fresh.close()


# --- cross-site requests behind a reverse proxy ------------------------------------------------------------------------
PUBLIC = "https://predict.example.org"
PROXIED = {"host": "127.0.0.1:8000"}  # what nginx's default proxy_pass sends upstream


def _answer(c, h, prompt_id: str, **headers) -> object:
    body = json.dumps({"prompt_id": prompt_id, "candidates": [{"text": " a", "p": 0.5}]})
    return c.post("/api/answer", content=body, headers={**h, "content-type": "application/json", **headers})


def test_origin_is_checked_against_the_public_url_behind_a_proxy(tiny_suite, game, tmp_path, human_db_url):
    app = create_app(tiny_suite, db_url=human_db_url, public_url=PUBLIC, game=game)
    c, h = participant(app, "alice")
    prompts = iter(p.id for s in ("practice", "sealed") for p in tiny_suite.prompts(s))
    accepted = {
        "the public origin, as a browser behind the proxy sends it": {**PROXIED, "origin": PUBLIC},
        "the same origin with its default port and other case": {**PROXIED, "origin": "HTTPS://Predict.Example.org:443"},
        "no Origin, a Referer on the public origin": {**PROXIED, "referer": PUBLIC + "/"},
        "neither Origin nor Referer (a non-browser client): the CSRF token decides": PROXIED,
    }
    for what, headers in accepted.items():
        r = _answer(c, h, next(prompts), **headers)
        assert r.status_code == 200, f"{what}: {r.status_code} {r.text}"
    refused = {
        "http instead of https": {**PROXIED, "origin": "http://predict.example.org"},
        "another host": {**PROXIED, "origin": "https://evil.example"},
        "another port": {**PROXIED, "origin": "https://predict.example.org:8443"},
        "a host that only starts like ours": {**PROXIED, "origin": "https://predict.example.org.evil.example"},
        "an opaque origin": {**PROXIED, "origin": "null"},
        "the proxy's upstream address, which is not where participants are": {**PROXIED,
                                                                               "origin": "http://127.0.0.1:8000"},
        "no Origin, a foreign Referer": {**PROXIED, "referer": "https://evil.example/predict.example.org"},
        "no Origin, a Referer over http": {**PROXIED, "referer": "http://predict.example.org/"},
    }
    for what, headers in refused.items():
        r = _answer(c, h, next(prompts), **headers)
        assert r.status_code == 403, f"{what}: {r.status_code} {r.text}"
        assert "cross-site request" in r.json()["detail"], what
    r = _answer(c, h, tiny_suite.prompts("sealed")[-1].id, **PROXIED, origin="https://evil.example")
    assert r.json()["detail"] == ("cross-site request refused: Origin 'https://evil.example' is not this server's "
                                  "address https://predict.example.org")
    assert stored(app) == len(accepted)
    # logout is a POST too
    assert c.post("/api/logout", headers={**h, **PROXIED, "origin": "https://evil.example"}).status_code == 403
    assert c.post("/api/logout", headers={**h, **PROXIED, "origin": PUBLIC}).status_code == 200
    # the login form: a foreign origin is refused before the invitation is used; Chrome's "null" for our own form
    # (a navigation under Referrer-Policy: no-referrer) counts as absent, and the form token decides
    token = app.state.db.add_participant("bob")
    b = TestClient(app)
    form_token = FORM_TOKEN.search(b.get(f"/join/{token}").text).group(1)
    data = {"token": token, "form_token": form_token}
    evil = b.post("/join", data=data, headers={**PROXIED, "origin": "https://evil.example"}, follow_redirects=False)
    assert evil.status_code == 403 and app.state.db.invitation_state(token) == "valid"
    ok = b.post("/join", data=data, headers={**PROXIED, "origin": "null"}, follow_redirects=False)
    assert ok.status_code == 303 and b.get("/api/me").json()["name"] == "bob"
    app.state.close()
    with pytest.raises(ValueError, match="public URL 'predict.example.org'"):
        create_app(tiny_suite, db_url=f"sqlite:///{tmp_path / 'x.sqlite'}", public_url="predict.example.org", game=game)


def test_origin_without_a_public_url_is_the_requests_own_scheme_and_host(app, tiny_suite):
    c, h = participant(app, "alice")
    prompts = iter(p.id for p in tiny_suite.prompts("practice"))
    assert _answer(c, h, next(prompts), host="127.0.0.1:8000", origin="http://127.0.0.1:8000").status_code == 200
    assert _answer(c, h, next(prompts), host="form.example", origin="http://form.example:80").status_code == 200
    for origin in ("https://127.0.0.1:8000", "http://127.0.0.1:8001", "http://localhost:8000"):
        assert _answer(c, h, next(prompts), host="127.0.0.1:8000", origin=origin).status_code == 403, origin
    # the fault this replaces: behind a proxy without the public URL, a legitimate answer cannot be told from a
    # foreign one; the refusal says what to do
    r = _answer(c, h, next(prompts), **PROXIED, origin=PUBLIC)
    assert r.status_code == 403 and "give serve --url" in r.json()["detail"]
    assert stored(app) == 2


# --- typed text: Unicode forms, several tokens, special-token strings --------------------------------------------------
def test_nfd_text_gets_the_same_token_as_nfc(app, tiny_suite, game):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", " café"), unicodedata.normalize("NFD", " café")
    assert nfd != nfc and len(nfd) == len(nfc) + 1  # "e" + U+0301
    cafe = tiny_suite.vocabulary.lookup(" café")
    assert cafe is not None
    raw = game.tokenizer.encode(nfd, add_special_tokens=False).ids  # the fault: NFD tokenizes as " ca", "fe", ...
    assert raw[0] != cafe and tiny_suite.vocabulary.text[raw[0]] == " ca"
    assert [t["id"] for t in game.read(nfd)["tokens"]] == [t["id"] for t in game.read(nfc)["tokens"]] == [cafe]
    c, h = participant(app, "alice")
    tk = c.get("/api/tokenize", params={"text": nfd}).json()
    assert tk["text"] == nfc and tk["normalized"] is True and tk["warning"] is None
    assert [t["id"] for t in tk["tokens"]] == [cafe]
    assert cafe in [t["id"] for t in c.get("/api/vocab", params={"q": nfd}).json()["tokens"]]  # suggestions too
    pid = tiny_suite.prompts("practice")[0].id
    r = c.post("/api/answer", headers=h, json={"prompt_id": pid, "candidates": [{"text": nfd, "p": 0.3}]})
    assert r.status_code == 200, r.text
    assert r.json()["candidates"] == [{"text": nfc, "token_id": cafe, "p": 0.3, "token": " café", "warning": None}]
    assert app.state.db.list_submissions()[0]["candidates"] == [{"text": nfc, "token_id": cafe, "p": 0.3}]


def test_a_typed_text_of_several_tokens_warns_which_token_counts(app, tiny_suite, game):
    vocab = tiny_suite.vocabulary
    cafe = vocab.lookup(" café")
    c, h = participant(app, "alice")
    tk = c.get("/api/tokenize", params={"text": " café au lait"}).json()
    assert tk["tokens"][0]["id"] == cafe and len(tk["tokens"]) == 4
    assert tk["warning"] == f"' café au lait' is 4 tokens: only the first (token {cafe}, ' café') counts"
    assert c.get("/api/tokenize", params={"text": " café"}).json()["warning"] is None  # exactly one token
    # a first token that is only part of a character (byte-level BPE splits 日 over tokens)
    part = c.get("/api/tokenize", params={"text": " 日本"}).json()
    first = part["tokens"][0]["id"]
    assert part["partial"] is True and vocab.text[first] == " \ufffd"
    assert part["warning"] == (f"' 日本' is {len(part['tokens'])} tokens and the first (token {first}, ' \ufffd') "
                               "holds only part of the character '日' (U+65E5): that partial token is the one that counts")
    # U+FFFD typed on purpose is a whole character and a token of its own: no warning (detection is by offsets,
    # not by looking for U+FFFD in the token's text)
    fffd = c.get("/api/tokenize", params={"text": "\ufffd"}).json()
    assert len(fffd["tokens"]) == 1 and vocab.text[fffd["tokens"][0]["id"]] == "\ufffd"
    assert fffd["partial"] is False and fffd["warning"] is None
    pid = tiny_suite.prompts("practice")[0].id
    r = c.post("/api/answer", headers=h, json={"prompt_id": pid, "candidates": [
        {"text": " café au lait", "p": 0.3}, {"text": " the", "p": 0.2}]})
    assert r.status_code == 200, r.text
    got = r.json()["candidates"]
    assert [x["token_id"] for x in got] == [cafe, vocab.lookup(" the")]
    assert got[0]["warning"] == tk["warning"] and got[1]["warning"] is None


def test_special_token_strings_are_typed_as_text(app, tiny_suite, game):
    vocab = tiny_suite.vocabulary
    specials = {i for i, t in game.tokenizer.get_added_tokens_decoder().items() if t.special}
    eot = vocab.lookup("<|endoftext|>")
    assert eot in specials
    c, h = participant(app, "alice")
    for typed in ("<|endoftext|>", " <|im_start|>user"):
        ids = [t["id"] for t in c.get("/api/tokenize", params={"text": typed}).json()["tokens"]]
        assert not set(ids) & specials, typed
        assert "".join(vocab.text[i] for i in ids) == typed  # the characters, token by token
    tk = c.get("/api/tokenize", params={"text": "<|endoftext|>"}).json()
    assert tk["tokens"][0]["id"] == vocab.lookup("<") and "only the first (token" in tk["warning"]
    pid = tiny_suite.prompts("practice")[0].id
    r = c.post("/api/answer", headers=h, json={"prompt_id": pid, "candidates": [
        {"text": "<|endoftext|>", "p": 0.2},  # typed: the text "<", not the end of the document
        {"text": "<|endoftext|>", "token_id": eot, "p": 0.1}]})  # picked from the vocabulary: the control token
    assert r.status_code == 200, r.text
    assert [x["token_id"] for x in r.json()["candidates"]] == [vocab.lookup("<"), eot]


# --- repeated keys, fields and parameters --------------------------------------------------------------------------------
def test_repeated_keys_fields_and_parameters_are_refused(app, tiny_suite):
    c, h = participant(app, "alice")
    json_h = {**h, "content-type": "application/json"}
    p0, p1 = (p.id for p in tiny_suite.prompts("practice")[:2])
    cand = '{"text": " a", "p": 0.5}'
    cases = [
        ("prompt_id", f'{{"prompt_id": "{p0}", "prompt_id": "{p1}", "candidates": [{cand}]}}'),
        ("candidates", f'{{"prompt_id": "{p0}", "candidates": [{cand}], "candidates": [{cand}, {cand}]}}'),
        ("p", f'{{"prompt_id": "{p0}", "candidates": [{{"text": " a", "p": 0.5, "p": 0.9}}]}}'),
        ("rest", f'{{"prompt_id": "{p0}", "rest": "uniform", "rest": "unigram", "candidates": [{cand}]}}'),
    ]
    for key, body in cases:
        r = c.post("/api/answer", content=body, headers=json_h)
        assert r.status_code == 422, (key, r.text)
        assert r.json()["detail"] == f"body: duplicate key {key!r} in a JSON object: give each key once"
    assert stored(app) == 0
    wrong_type = c.post("/api/answer", content=f'{{"prompt_id": "{p0}", "candidates": [{cand}]}}',
                        headers={**h, "content-type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["detail"]
    assert c.post("/api/answer", content=cases[0][1].replace(f'"prompt_id": "{p1}", ', ""),
                  headers=json_h).status_code == 200  # the same body with the key once
    # logout's body, empty or an object without fields, is parsed the same way
    assert c.post("/api/logout", content='{"a": 1, "a": 2}', headers=json_h).json()["detail"] == (
        "body: duplicate key 'a' in a JSON object: give each key once")
    assert c.post("/api/logout", content='{"everyone": true}', headers=json_h).status_code == 422
    assert c.get("/api/me").status_code == 200  # still logged in
    # query parameters
    r = c.get("/api/next?split=practice&split=sealed")
    assert r.status_code == 422 and r.json()["detail"] == (
        "query parameter 'split' is given more than once: give it once")
    assert c.get("/api/tokenize?text=%20a&text=%20b").status_code == 422
    # the login form (form-encoded): a repeated field is refused and the invitation stays unused
    token = app.state.db.add_participant("bob")
    b = TestClient(app)
    form_token = FORM_TOKEN.search(b.get(f"/join/{token}").text).group(1)
    r = b.post("/join", content=f"token={token}&token=other&form_token={form_token}",
               headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 422 and r.json()["detail"] == "login form: field 'token' is given more than once"
    assert app.state.db.invitation_state(token) == "valid"
    r = b.post("/join", data={"token": token, "form_token": form_token, "role": "admin"}, follow_redirects=False)
    assert r.status_code == 422 and "unknown field 'role'" in r.json()["detail"]
    ok = b.post("/join", data={"token": token, "form_token": form_token}, follow_redirects=False)
    assert ok.status_code == 303 and b.get("/api/me").json()["name"] == "bob"
    assert c.post("/api/logout", content="{}", headers=json_h).status_code == 200
    assert c.get("/api/me").status_code == 401


def test_admin_export_reads_back_to_the_same_tokens(app, tiny_suite, tmp_path):
    """Token 112 (raw form '¢', a byte piece decoding to U+FFFD) has no unique name but its id; '¢' is token 26387's
    text. The export names it by id, so it reads back as 112, not 26387."""
    from predictors import iter_jsonl, validate

    vocab = tiny_suite.vocabulary
    assert vocab.raw[112] == "¢" and vocab.text[26387] == "¢" and vocab.lookup("¢") is None  # ambiguous names
    assert vocab.lookup(vocab.text[112]) is None
    c, h = participant(app, "alice")
    pid = tiny_suite.prompts("practice")[0].id
    body = {"prompt_id": pid, "candidates": [{"text": vocab.text[112], "token_id": 112, "p": 0.5}]}
    assert c.post("/api/answer", json=body, headers=h).status_code == 200
    admin = TestClient(app)
    login(admin, app.state.db.admin_link())
    text = admin.get("/admin/export", params={"split": "practice", "participant": "alice"}).text
    path = tmp_path / "alice.jsonl"
    path.write_text(text, encoding="utf-8")
    lines = list(iter_jsonl(path))
    assert all(not isinstance(p, str) for _, p in lines), lines  # no line rejected
    checked = validate(lines, [pid], vocab, tiny_suite.background)
    assert checked.errors == [] and checked.prompt_ids == [pid]
    assert checked.probs[0, 112] == pytest.approx(0.5)


def test_database_passwords_are_never_printed():
    from evals.human.db import Database, shown

    assert shown("postgresql+psycopg://form:s3cret@127.0.0.1:5433/human") == (
        "postgresql+psycopg://form:***@127.0.0.1:5433/human")
    assert shown("sqlite:////tmp/h.sqlite") == "sqlite:////tmp/h.sqlite"
    assert "s3cret" not in Database("postgresql+psycopg://form:s3cret@127.0.0.1:1/x").shown_url
