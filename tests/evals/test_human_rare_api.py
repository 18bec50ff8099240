"""API tests of the human form's rare-behaviour mode (issue 13 part 4): FastAPI's TestClient on a real database
(SQLite and PostgreSQL, fixture ``human_db_url``) and a small real reference set (SmolLM2: one product distribution of
2 positions x 4 English tokens, a two-text behaviour, a token behaviour, one reference token; ``rare_game``).

Feedback is checked against ``tasks.rare.questions.truth(record)`` read here, for every question; a second answer is a
409 that stores nothing; bad answers are 422s naming the field; the exported file is accepted and scored by
``evals.rare_scoring.score_rare_file`` with the errors the form showed.
"""

from __future__ import annotations

import json
import math

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from evals.human.app import create_app
from evals.human.client import FORM_TOKEN
from evals.human.db import DbError, open_db
from evals.human.rare import RareGame, export, question_key
from evals.human.trajectory import one_in

SPEC = """version: 1
corpus: wiki
distributions:
  - {id: en, kind: product, prefix: "The word", tokens: english, positions: 2, size: 4}
behaviours:
  - {id: swear, texts: [" damn", " hell"]}
  - {id: comma, token: 11}
reference: {tokens: 1, low: 1.0e-7, high: 1.0e-3}
"""


@pytest.fixture(scope="session")
def rare_spec(tiny_suite, target, tmp_path_factory):
    """The spec file, with its reference set built for the target (in the session's data home)."""
    from tasks.rare.reference import build_reference
    from tasks.rare.spec import read_spec

    path = tmp_path_factory.mktemp("rare-spec") / "rare.yaml"
    path.write_text(SPEC)
    build_reference(read_spec(path), target)
    return path


@pytest.fixture(scope="session")
def rare_game(rare_spec, target):
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import read_spec

    return RareGame(load_reference(read_spec(rare_spec), target.identity.id), target.tokenizer)


@pytest.fixture
def app(rare_game, human_db_url):
    a = create_app(None, db_url=human_db_url, rare=rare_game)
    yield a
    a.state.close()


def participant(app, name: str) -> tuple[TestClient, dict]:
    token = app.state.db.add_participant(name)
    c = TestClient(app)
    page = c.get(f"/join/{token}")
    r = c.post("/join", data={"token": token, "form_token": FORM_TOKEN.search(page.text).group(1)},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c, {"x-csrf-token": c.get("/api/me").json()["csrf"]}


def stored(app) -> int:
    with app.state.db.read() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM trajectory_answers")).scalar()


def test_every_question_in_words_with_feedback_equal_to_the_truth(app, rare_game, target, tmp_path):
    from evals.rare_scoring import score_rare_file
    from tasks.rare.questions import questions, truth

    record = rare_game.record
    exact = truth(record)
    asked = [q for q in questions(record, target.tokenizer) if "continuation_id" in q]
    assert len(asked) == len(exact) == len(rare_game.questions) > 10
    assert {q["question"] for q in asked} == {"P_D(B)", "P(B|x)"}
    c, h = participant(app, "alice")
    me = c.get("/api/me").json()
    assert me["questions"] == "rare" and me["progress"]["practice"] == {
        "answered": 0, "mean_abs_error_log10": None, "total": len(asked)}
    assert c.get("/").text.count("rare.js") == 1
    shown = []
    for n, q in enumerate(asked):
        nxt = c.get("/api/rare/next").json()
        assert nxt["index"] == n and nxt["total"] == len(asked) and not nxt["done"]
        assert nxt["scale"] == {"min": -12, "max": -1, "step": 0.1}
        pub = nxt["question"]
        assert (pub["prompt_id"], pub["continuation_id"], pub["question"]) == (
            q["prompt_id"], q["continuation_id"], q["question"])
        if q["continuation_id"] == "swear":
            assert pub["behaviour_texts"] == [" damn", " hell"]
            assert "' damn' or ' hell'" in pub["wording"]
        if q["question"] == "P(B|x)":
            assert pub["text"] == q["text"] and pub["text"].startswith("The word")
            assert pub["wording"].startswith("How likely is the model to continue this text with")
        else:  # the distribution described: prefix, and per position the tokens with their weights
            d = pub["distribution"]
            assert d["kind"] == "product" and d["prefix"] == "The word" and len(d["positions"]) == 2
            assert [len(p) for p in d["positions"]] == [4, 4]
            assert all(sum(t["p"] for t in p) == pytest.approx(1.0) for p in d["positions"])
        x = -1.0 - (0.37 * n) % 11  # various answers in [-12, -1]
        r = c.post("/api/rare/answer", headers=h, json={"prompt_id": q["prompt_id"],
                                                       "continuation_id": q["continuation_id"], "log10prob": x})
        assert r.status_code == 200, r.text
        fb = r.json()["feedback"]
        p = exact[(q["prompt_id"], q["continuation_id"])]
        assert fb["true_p"] == p
        assert fb["true_log10prob"] == pytest.approx(math.log10(p), rel=1e-12)
        assert fb["true_one_in"] == one_in(math.log(p) / math.log(10))
        assert fb["error_log10"] == pytest.approx(x - math.log10(p), abs=1e-12)
        assert fb["direction"] == ("over" if x > math.log10(p) else "under")
        shown.append(((q["prompt_id"], q["continuation_id"]), fb["error_log10"]))
    assert c.get("/api/rare/next").json() == {"done": True, "total": len(asked)}
    mine = c.get("/api/rare/answers").json()["answers"]
    assert [(a["prompt_id"], a["continuation_id"]) for a in mine] == [k for k, _ in shown]
    me = c.get("/api/me").json()["progress"]["practice"]
    assert me["answered"] == len(asked)
    assert me["mean_abs_error_log10"] == pytest.approx(sum(abs(e) for _, e in shown) / len(shown), rel=1e-9)

    # export: a predictions file `rare score` accepts, whose per-question errors are the ones shown
    paths = export(app.state.db, rare_game, tmp_path)
    assert [p.name for p in paths] == ["human-alice-rare.jsonl", "human-team-rare.jsonl"]
    lines = [json.loads(x) for x in paths[0].read_text().splitlines()]
    assert [(x["prompt_id"], x["continuation_id"]) for x in lines] == [k for k, _ in shown]
    result = score_rare_file(record, paths[0], predictor={"name": "human"}, write=False)
    assert result.summary["n_scored"] == len(asked) and result.summary["n_rejected"] == 0
    assert result.summary["missing"] == []
    got = {(r.prompt_id, r.continuation_id): r.error_log10 for r in result.per_prompt.itertuples()}
    for k, e in shown:
        assert got[k] == pytest.approx(e, abs=1e-12)
    # the organiser's export link gives the same lines
    admin = TestClient(app)
    tok = app.state.db.admin_link()
    page = admin.get(f"/join/{tok}")
    admin.post("/join", data={"token": tok, "form_token": FORM_TOKEN.search(page.text).group(1)})
    assert "no sealed split" in admin.get("/admin").text
    r = admin.get("/admin/export", params={"participant": "alice", "split": "practice"})
    assert r.status_code == 200 and r.text == paths[0].read_text()


def test_one_answer_per_question_and_422s_naming_the_field(app, rare_game):
    c, h = participant(app, "bob")
    q = c.get("/api/rare/next").json()["question"]
    body = {"prompt_id": q["prompt_id"], "continuation_id": q["continuation_id"]}
    for bad, field in [({**body, "log10prob": "-3"}, "log10prob"), ({**body, "log10prob": -12.5}, "log10prob"),
                       ({**body, "log10prob": -0.5}, "log10prob"), ({**body}, "log10prob"),
                       ({"prompt_id": q["prompt_id"], "log10prob": -3}, "continuation_id"),
                       ({**body, "log10prob": -3, "extra": 1}, "extra")]:
        r = c.post("/api/rare/answer", headers=h, json=bad)
        assert r.status_code == 422 and field in r.json()["detail"], (bad, r.text)
    r = c.post("/api/rare/answer", headers=h, content=b'{"prompt_id": "en", "continuation_id": "swear", '
                                                       b'"log10prob": NaN}')
    assert r.status_code == 422, r.text
    r = c.post("/api/rare/answer", headers=h, json={**body, "continuation_id": "nope", "log10prob": -3})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = c.post("/api/rare/answer", json={**body, "log10prob": -3})  # no CSRF token
    assert r.status_code == 403
    assert stored(app) == 0
    r = c.post("/api/rare/answer", headers=h, json={**body, "log10prob": -3})
    assert r.status_code == 200
    r = c.post("/api/rare/answer", headers=h, json={**body, "log10prob": -4})
    assert r.status_code == 409 and "already answered" in r.json()["detail"]
    assert stored(app) == 1
    with app.state.db.read() as conn:
        row = conn.execute(sa.text("SELECT prompt_id, continuation_id, split, log10prob FROM trajectory_answers")).one()
    assert tuple(row) == (q["prompt_id"], question_key(q["prompt_id"], q["continuation_id"]), "practice", -3.0)
    # the same behaviour under another question is another answer
    other = next(x for x in rare_game.questions if x.continuation_id == q["continuation_id"]
                 and x.prompt_id != q["prompt_id"])
    r = c.post("/api/rare/answer", headers=h, json={"prompt_id": other.prompt_id,
                                                   "continuation_id": other.continuation_id, "log10prob": -3})
    assert r.status_code == 200 and stored(app) == 2
    # no next-token or trajectory question in this mode
    assert c.get("/api/next").status_code == 404
    assert c.post("/api/answer", headers=h, json={"prompt_id": "p", "candidates": []}).status_code == 404
    assert c.get("/api/trajectory/next").status_code == 404
    assert c.get("/api/vocab", params={"q": "a"}).status_code == 404


def test_the_database_belongs_to_its_reference_set(app, rare_game, human_db_url, tiny_suite):
    assert rare_game.form.name.startswith("rare-") and rare_game.form.version == rare_game.record["commitment"][:16]
    app.state.close()
    with pytest.raises(DbError, match="holds answers for suite"):
        open_db(human_db_url, tiny_suite)
