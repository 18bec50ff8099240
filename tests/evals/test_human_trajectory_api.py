"""API tests of the human form's trajectory mode (issue 12 part 7): FastAPI's TestClient on a real database (SQLite and
PostgreSQL, fixture ``human_db_url``) and the session's real trajectory suite ``traj`` (SmolLM2 truth by the chain
rule; 3 + 3 wiki prompts, M = 4, K = 2 samples, two behaviours; tests/conftest.py), copied so nothing here changes it.

Practice feedback is checked against the truth read here with ``load_trajectories``; sealed answers must carry no
truth value; sampled continuations must never appear; and the server must work with the sealed trajectory truth
files deleted, which shows it never loads them.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from evals.human.app import create_app
from evals.human.client import FORM_TOKEN
from evals.human.db import SCHEMA_VERSION, open_db
from evals.human.game import Game
from evals.human.trajectory import TrajectoryGame, one_in
from evals.human.trajectory_export import export

LN10 = math.log(10.0)


@pytest.fixture(scope="module")
def home(trajectory_home, tmp_path_factory):
    """A copy of the session's trajectory home, as LOGITPRED_HOME for this module."""
    dest = tmp_path_factory.mktemp("human-traj") / "home"
    shutil.copytree(trajectory_home, dest, symlinks=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOGITPRED_HOME", str(dest))
        yield dest


@pytest.fixture(scope="module")
def suite(home):
    from tasks import load_suite

    return load_suite("traj")


@pytest.fixture(scope="module")
def game(suite):
    return Game(suite)


@pytest.fixture(scope="module")
def truth(suite):
    """Both splits' trajectory truth, read by the test (never by the server)."""
    from tasks.trajectory import load_trajectories

    t = load_trajectories(suite)
    return {s: t.split(s) for s in ("practice", "sealed")}


@pytest.fixture
def app(suite, game, human_db_url):
    a = create_app(suite, db_url=human_db_url, sealed_per_minute=1000, game=game)
    yield a
    a.state.close()


def login(app, token: str) -> TestClient:
    c = TestClient(app)
    page = c.get(f"/join/{token}")
    r = c.post("/join", data={"token": token, "form_token": FORM_TOKEN.search(page.text).group(1)},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def participant(app, name: str) -> tuple[TestClient, dict]:
    c = login(app, app.state.db.add_participant(name))
    return c, {"x-csrf-token": c.get("/api/me").json()["csrf"]}


def stored(app) -> int:
    with app.state.db.read() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM trajectory_answers")).scalar()


def sampled(truth) -> tuple[set[str], set[str]]:
    """Ids and texts of the sampled continuations (texts also shown as a realized or given question left out)."""
    ids, texts = set(), set()
    for split in truth.values():
        shown = {c.text for c in split.continuations if c.kind != "sampled"}
        for c in split.continuations:
            if c.kind == "sampled":
                ids.add(c.id)
                if c.text not in shown:
                    texts.add(c.text)
    assert ids and texts  # precondition: the suite has samples, so the checks below can fail
    return ids, texts


def leaves(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from leaves(v)
    else:
        yield x


def test_practice_feedback_equals_the_truth(app, suite, truth):
    from tasks.trajectory import questions

    c, h = participant(app, "alice")
    asked = [q for q in questions(suite, "practice") if "continuation_id" in q]
    assert {q["kind"] for q in asked} == {"realized", "given"}
    errors = []
    for n, q in enumerate(asked):
        nxt = c.get("/api/trajectory/next", params={"split": "practice"}).json()
        assert "question" in nxt, nxt
        shown = nxt["question"]
        assert nxt["index"] == n and nxt["total"] == len(asked) and nxt["scale"] == {"min": -12, "max": -1, "step": 0.1}
        assert (shown["continuation_id"], shown["kind"], shown["continuation"]) == (
            q["continuation_id"], q["kind"], q["text"])
        assert shown["prompt"] == next(p.text for p in suite.prompts("practice") if p.id == q["prompt_id"])
        x = -1.0 - 0.7 * n  # -1, -1.7, -2.4, ...
        r = c.post("/api/trajectory/answer", headers=h, json={"continuation_id": q["continuation_id"], "log10prob": x})
        assert r.status_code == 200, r.text
        fb = r.json()["feedback"]
        i = truth["practice"].index(q["continuation_id"])
        true_nats = float(truth["practice"].logprob[i])
        assert fb["true_logprob"] == true_nats and fb["n_tokens"] == len(q["token_ids"])
        assert fb["true_log10prob"] == pytest.approx(true_nats / LN10, rel=1e-12)
        assert fb["true_one_in"] == one_in(true_nats / LN10)
        expect = (x * LN10 - true_nats) / LN10  # positive: the answer over-estimates
        assert fb["error_log10"] == pytest.approx(expect, abs=1e-12)
        assert fb["direction"] == ("over" if expect > 0 else "under")
        errors.append(abs(expect))
        assert r.json()["running"] == {"answered": n + 1, "mean_abs_error_log10": pytest.approx(np.mean(errors))}
    assert c.get("/api/trajectory/next", params={"split": "practice"}).json()["done"] is True
    assert one_in(-2.5) == "1 in 320" and one_in(-7.5) == "1 in 3.2 × 10^7"
    me = c.get("/api/me").json()
    assert me["questions"] == "trajectory" and me["progress"]["practice"]["answered"] == len(asked)
    # a trajectory suite asks no next-token question: those routes refuse, and store nothing
    assert c.get("/api/next").status_code == 404
    nt = c.post("/api/answer", headers=h, json={"prompt_id": asked[0]["prompt_id"],
                                                "candidates": [{"text": " a", "p": 0.5}]})
    assert nt.status_code == 404 and "whole-continuation" in nt.json()["detail"]
    assert app.state.db.list_submissions() == [] and stored(app) == len(asked)


def test_sealed_answers_show_no_truth_and_no_sample(app, suite, truth):
    """Every route is called (the test fails if a new one is not), every sealed question answered: no response holds a
    sealed truth value, a sampled continuation's id or its text; a second answer is 409. The same check does find
    the practice truth in practice feedback, so it can fail."""
    sealed = truth["sealed"]
    values, texts = [], []
    for c in sealed.continuations:
        if c.kind != "sampled":
            lp = float(sealed.logprob[sealed.index(c.id)])
            values += [lp, lp / LN10]
            texts += [one_in(lp / LN10), f"{lp / LN10:.2f}"]
    ids, sample_texts = sampled(truth)
    c, h = participant(app, "leaky")
    admin = login(app, app.state.db.admin_link())
    bodies, covered = [], set()

    def call(client, method, template, path=None, **kw):
        covered.add((method, template))
        r = client.request(method, path or template, **kw)
        bodies.append((f"{method} {path or template} -> {r.status_code}", r))
        return r

    n = 0
    while not (nxt := call(c, "GET", "/api/trajectory/next", params={"split": "sealed"}).json())["done"]:
        body = {"continuation_id": nxt["question"]["continuation_id"], "log10prob": -5.0}
        r = call(c, "POST", "/api/trajectory/answer", json=body, headers=h)
        assert r.status_code == 200 and "feedback" not in r.json() and "running" not in r.json()
        again = call(c, "POST", "/api/trajectory/answer", json=body, headers=h)
        assert again.status_code == 409 and "already answered" in again.json()["detail"]
        n += 1
    assert n == sum(x.kind != "sampled" for x in sealed.continuations) == stored(app)
    for path in ("/api/trajectory/answers", "/api/me", "/api/submissions", "/healthz", "/favicon.ico"):
        call(c, "GET", path)
    call(c, "GET", "/api/next")  # 404: no next-token question here
    call(c, "POST", "/api/answer", json={"prompt_id": "x", "candidates": [{"text": " a", "p": 0.5}]}, headers=h)
    call(c, "GET", "/api/submissions/{sid}", "/api/submissions/1")
    call(c, "GET", "/api/vocab", params={"q": "Paragu"})
    call(c, "GET", "/api/tokenize", params={"text": " Paragu"})
    home = call(c, "GET", "/")
    assert "trajectory.js" in home.text  # the trajectory page, not the next-token form
    call(admin, "GET", "/")
    call(admin, "GET", "/admin")
    exported = [call(admin, "GET", "/admin/export", params={"split": "sealed", "participant": who})
                for who in ("leaky", "team")]
    fresh = app.state.db.admin_link()
    call(TestClient(app), "GET", "/join/{token}", f"/join/{fresh}")
    call(TestClient(app), "POST", "/join", data={"token": fresh, "form_token": "x"})
    for f in ("common.js", "trajectory.js", "trajectory.html"):
        call(c, "GET", "/static", f"/static/{f}")
    call(c, "POST", "/api/logout", headers=h)
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", {"GET"}) - {"HEAD"}}
    assert routes == covered, f"routes not covered by this test: {routes - covered}"

    def leaks(items, values, texts):
        found = []
        for where, r in items:
            found += [f"{where}: sampled id {i}" for i in ids if i in r.text]
            try:
                obj = r.json()
            except ValueError:
                found += [f"{where}: {t!r}" for t in texts if t in r.text]
                continue
            for x in leaves(obj):
                if isinstance(x, float) and any(abs(x - v) <= 1e-9 * max(1.0, abs(v)) for v in values):
                    found.append(f"{where}: value {x}")
                elif isinstance(x, str) and (x in sample_texts or x in texts):
                    found.append(f"{where}: text {x!r}")
        return found

    assert leaks(bodies, values, texts) == []
    for r in exported:  # the organiser's files: every sealed answer, as given
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert r.status_code == 200 and len(lines) == n and {x["log10prob"] for x in lines} == {-5.0}
    # the detector is not blind: practice feedback holds the practice truth
    pr = truth["practice"]
    pv = [float(v) for v in pr.logprob] + [float(v) / LN10 for v in pr.logprob]
    c2, h2 = participant(app, "control")
    q = c2.get("/api/trajectory/next", params={"split": "practice"}).json()["question"]
    r = c2.post("/api/trajectory/answer", headers=h2, json={"continuation_id": q["continuation_id"], "log10prob": -3})
    assert len(leaks([("practice", r)], pv, [])) == 2


def test_the_server_never_loads_sealed_trajectory_truth(suite, game, truth, tmp_path, human_db_url, monkeypatch):
    """With the sealed continuation and truth files deleted (a copy of the home), the form still serves and takes
    every sealed answer: it never reads them. Practice feedback still works."""
    from tasks import load_suite
    from tasks.trajectory import trajectory_dir

    dest = tmp_path / "home"
    shutil.copytree(os.environ["LOGITPRED_HOME"], dest, symlinks=True)
    monkeypatch.setenv("LOGITPRED_HOME", str(dest))
    bare = load_suite("traj")
    gone = sorted(trajectory_dir(bare).glob("sealed-*"))
    assert len(gone) == 2
    for f in gone:
        f.unlink()
    app = create_app(bare, db_url=human_db_url, sealed_per_minute=1000, game=game)
    try:
        c, h = participant(app, "alice")
        while not (nxt := c.get("/api/trajectory/next", params={"split": "sealed"}).json())["done"]:
            r = c.post("/api/trajectory/answer", headers=h,
                       json={"continuation_id": nxt["question"]["continuation_id"], "log10prob": -4.2})
            assert r.status_code == 200 and set(r.json()) == {"accepted", "answer_id", "prompt_id", "continuation_id",
                                                              "split", "log10prob", "one_in", "answered", "total"}
        assert nxt["total"] == stored(app) > 0
        q = c.get("/api/trajectory/next", params={"split": "practice"}).json()["question"]
        r = c.post("/api/trajectory/answer", headers=h, json={"continuation_id": q["continuation_id"],
                                                              "log10prob": -2})
        assert r.json()["feedback"]["true_logprob"] == float(truth["practice"].logprob[
            truth["practice"].index(q["continuation_id"])])
    finally:
        app.state.close()


BAD = [
    ("number as a string", {"log10prob": "-3"}, 422, "log10prob"),
    ("below the scale", {"log10prob": -12.5}, 422, "log10prob"),
    ("above the scale", {"log10prob": -0.5}, 422, "log10prob"),
    ("a probability, not log10", {"log10prob": 0.001}, 422, "log10prob"),
    ("missing answer", {}, 422, "log10prob"),
    ("boolean", {"log10prob": True}, 422, "log10prob"),
    ("unknown field", {"log10prob": -3, "logprob": -7}, 422, "logprob"),
    ("unknown continuation", {"continuation_id": "traj-000000000000:r", "log10prob": -3}, 404, "unknown"),
    ("empty continuation id", {"continuation_id": "", "log10prob": -3}, 422, "continuation_id"),
]


@pytest.mark.parametrize("what,change,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_answers_get_a_clear_4xx_and_store_nothing(app, suite, what, change, status, message):
    c, h = participant(app, "alice")
    body = {"continuation_id": TrajectoryGame(suite, practice_truth=False).questions["sealed"][0].continuation_id,
            **change}
    r = c.post("/api/trajectory/answer", headers=h, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert stored(app) == 0


def test_sampled_ids_duplicate_keys_nan_csrf_and_origin_are_refused(app, suite, truth):
    c, h = participant(app, "alice")
    sample = sorted(sampled(truth)[0])[0]  # a sample is no question: it looks exactly like an unknown id
    r = c.post("/api/trajectory/answer", headers=h, json={"continuation_id": sample, "log10prob": -3})
    assert r.status_code == 404 and "unknown continuation id" in r.json()["detail"]
    cid = TrajectoryGame(suite, practice_truth=False).questions["sealed"][0].continuation_id
    good = json.dumps({"continuation_id": cid, "log10prob": -3.5})
    json_h = {**h, "content-type": "application/json"}
    post = lambda **kw: c.post("/api/trajectory/answer", **kw)  # noqa: E731
    cases = [
        ("NaN", post(content=good.replace("-3.5", "NaN"), headers=json_h), 422, "log10prob"),
        ("Infinity", post(content=good.replace("-3.5", "-Infinity"), headers=json_h), 422, "log10prob"),
        ("key given twice", post(content=good[:-1] + ', "log10prob": -2}', headers=json_h), 422, "log10prob"),
        ("no CSRF header", post(content=good, headers={"content-type": "application/json"}), 403, "CSRF"),
        ("cross-site origin", post(content=good, headers={**json_h, "origin": "http://evil.example"}), 403,
         "cross-site"),
        ("no session", TestClient(app).post("/api/trajectory/answer", content=good, headers=json_h), 401, "logged"),
    ]
    for what, r, status, message in cases:
        assert r.status_code == status and message in r.json()["detail"], f"{what}: {r.status_code} {r.text[:200]}"
    assert stored(app) == 0
    assert post(content=good, headers=json_h).status_code == 200  # the same request, done right


def test_export_keeps_each_participant_apart_and_pools_the_team(app, suite, tmp_path):
    qs = TrajectoryGame(suite, practice_truth=False).questions["sealed"]
    answers = {"alice": {0: -2.0, 1: -6.5}, "bob": {0: -4.0, 2: -9.1}}
    for name, items in answers.items():
        c, h = participant(app, name)
        for i, x in items.items():
            r = c.post("/api/trajectory/answer", headers=h, json={"continuation_id": qs[i].continuation_id,
                                                                  "log10prob": x})
            assert r.status_code == 200
    files = export(app.state.db, TrajectoryGame(suite, practice_truth=False), "sealed", tmp_path)
    assert sorted(f.name for f in files) == ["human-alice-sealed.jsonl", "human-bob-sealed.jsonl",
                                              "human-team-sealed.jsonl"]
    read = {f.name.split("-")[1]: [json.loads(x) for x in f.read_text().splitlines()] for f in files}
    for name, items in answers.items():
        assert read[name] == [{"prompt_id": qs[i].prompt_id, "continuation_id": qs[i].continuation_id,
                               "log10prob": x} for i, x in sorted(items.items())]
    team = {x["continuation_id"]: x["log10prob"] for x in read["team"]}
    assert team[qs[0].continuation_id] == pytest.approx(math.log10((1e-2 + 1e-4) / 2), abs=1e-12)
    assert team[qs[1].continuation_id] == pytest.approx(-6.5, abs=1e-12)
    meta = json.loads((tmp_path / "human-bob-sealed.jsonl.meta.json").read_text())
    assert meta["label"] == "human:bob" and meta["approved"] is True and meta["n"] == 2


def test_an_existing_database_gains_the_trajectory_table(suite, human_db_url):
    """A database written before the trajectory table existed (its other tables and a next-token answer) opens: the
    table is added, the old rows are kept, the schema version is unchanged."""
    from evals.human import db as dbmod

    old = sa.MetaData()
    for t in dbmod.metadata.sorted_tables:
        if t.name != "trajectory_answers":
            t.to_metadata(old)
    engine = sa.create_engine(human_db_url)
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(sa.insert(old.tables["meta"]), [{"key": "schema_version", "value": SCHEMA_VERSION},
                                                     {"key": "suite", "value": suite.name},
                                                     {"key": "suite_version", "value": suite.version}])
        conn.execute(sa.insert(old.tables["participants"]).values(id=1, name="early", created=1.0))
        conn.execute(sa.insert(old.tables["submissions"]).values(
            participant_id=1, prompt_id="p", split="practice", mode="list", rest="unigram",
            candidates='[{"text": " a", "token_id": 264, "p": 0.5}]', kl=0.1, ce=0.2, created=2.0))
    assert "trajectory_answers" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    db = open_db(human_db_url, suite)
    try:
        rows = db.list_submissions()
        assert len(rows) == 1 and rows[0]["name"] == "early" and rows[0]["candidates"][0]["p"] == 0.5
        with db.read() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM trajectory_answers")).scalar() == 0
    finally:
        db.dispose()
