"""End to end: the real page in headless Chromium (Debian's package, driven by Playwright) against a real
``logitpred serve`` subprocess on the tiny suite, using the keyboard only: log in through the invitation, answer a
practice prompt with vocabulary autocomplete, see the feedback, answer a sealed prompt in quick mode, resume after
closing the browser, then export and score with the CLI; the KL the page showed equals the KL ``logitpred score``
computes from the exported file. Runs on SQLite and on PostgreSQL (`make test` starts the server). Needs
/usr/bin/chromium (``make setup`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from evals.human.client import serve
from evals.human.db import open_db
from evals.leaderboard import leaderboard
from evals.records import read_runs

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
pytestmark = pytest.mark.slow


def logitpred(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "logitpred"), *args], capture_output=True, text=True,
                          env={**os.environ, **env, "COLUMNS": "200"}, timeout=300)


def test_participant_session_in_a_real_browser(tiny_suite, tmp_path, human_db_url):
    """On SQLite and on PostgreSQL (a fresh database each; fixture ``human_db_url`` in tests/conftest.py)."""
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian chromium is missing: run `make setup` (apt-get install chromium)"
    url = human_db_url
    db = open_db(url, tiny_suite)
    link_token = db.add_participant("alice")
    db.dispose()
    practice, sealed = tiny_suite.prompts("practice"), tiny_suite.prompts("sealed")
    with serve("tiny", url, log=tmp_path / "server.log") as (base, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/join/{link_token}")
        expect(page.locator("#login")).to_be_focused()  # autofocus: a keyboard user lands on the button
        page.keyboard.press("Enter")
        expect(page.locator("#prompt .end")).to_have_count(1)

        # the prompt: exact text, whitespace made visible, the end marked
        expect(page.locator("#prompt-pos")).to_have_text("1 of 6 (practice)")
        shown = page.locator("#prompt").inner_text()
        visible = practice[0].text.replace(" ", "·").replace("\n", "↵\n").replace("\t", "→")
        assert shown == visible + "▮"

        # candidate 1: typed prefix, chosen from the vocabulary with the arrow keys
        page.keyboard.type(" emph")
        first = page.locator(".row").nth(0)
        expect(first.locator(".sugg li").first).to_be_visible()
        suggestion = first.locator(".sugg li").first.inner_text()
        assert suggestion.startswith("·emph")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        expect(first.locator(".toks")).to_contain_text("picked from the vocabulary")
        assert first.locator(".cont").input_value() == suggestion.replace("·", " ")
        page.keyboard.type("40")  # focus moved to its probability
        # candidate 2: an accent typed as a combining mark (NFD, as some keyboards send it) is composed before it is
        # tokenized: one token, " café", not " ca" + "fe" + ...
        page.keyboard.press("Alt+a")
        second = page.locator(".row").nth(1)
        page.keyboard.type(unicodedata.normalize("NFD", " café"))
        assert second.locator(".cont").input_value() == " cafe\u0301"
        expect(second.locator(".toks")).to_contain_text("one token")
        expect(second.locator(".tok")).to_have_count(1)
        expect(second.locator(".tok.first")).to_have_text("·café")
        expect(second.locator(".warn")).to_have_count(0)
        # then a typed continuation of two tokens: only the first counts, and the page says which token that is
        page.keyboard.press("Control+a")
        page.keyboard.type(" of the")
        expect(second.locator(".tok")).to_have_count(2)
        expect(second.locator(".tok.first")).to_have_text("·of")
        of = tiny_suite.vocabulary.lookup(" of")
        expect(second.locator(".warn")).to_have_text(f"⚠ ' of the' is 2 tokens: only the first (token {of}, ' of') counts")
        page.keyboard.press("Tab")
        page.keyboard.type("70")
        expect(page.locator("#total")).to_contain_text("over 100%")
        expect(page.locator("#submit")).to_be_disabled()
        page.keyboard.press("Enter")  # refused on the page: nothing is sent
        page.keyboard.press("Control+a")
        page.keyboard.type("25")
        expect(page.locator("#total")).to_contain_text("Named 65.0%")
        page.keyboard.press("Enter")

        # practice feedback: top 10, KL and cross-entropy, running score
        result = page.locator("#result")
        expect(result.locator("tbody tr")).to_have_count(10)
        text = result.inner_text()
        shown_kl = float(re.search(r"KL\(target ‖ you\): ([0-9.]+) nats", text).group(1))
        assert re.search(r"Running practice score: 1 answered", text)
        assert f"⚠ ' of the' is 2 tokens: only the first (token {of}, ' of') counts" in text  # said again when saved
        # "Next prompt" gets focus once the page has also refreshed the progress (after the feedback is drawn): wait
        # for it, as a keyboard user would, or under load Enter can land before it (seen with two cores busy)
        expect(page.locator("#next")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#prompt-pos")).to_have_text("2 of 6 (practice)")

        # the sealed round, in quick mode, without touching the mouse
        page.locator("#tab-sealed").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#prompt-pos")).to_have_text("1 of 6 (sealed)")
        page.locator("input[name=mode][value=list]").focus()
        page.keyboard.press("ArrowDown")  # radio group: selects "quick"
        expect(page.locator(".plabel").first).to_have_text("Confidence")
        page.locator(".cont").first.focus()
        page.keyboard.type(" the")
        expect(page.locator("#rows .tok.first")).to_have_text("·the")
        page.keyboard.press("Escape")
        page.keyboard.press("Tab")
        page.keyboard.type("55")
        page.keyboard.press("Enter")
        expect(result).to_contain_text("Saved (sealed answer 1 of 6")
        assert result.locator("table").count() == 0 and "KL" not in result.inner_text()
        assert errors == []
        context.storage_state(path=tmp_path / "state.json")
        context.close()

        # close the browser, come back: it resumes where it left off
        again = browser.new_context(storage_state=tmp_path / "state.json")
        page = again.new_page()
        page.goto(base)
        expect(page.locator("#prompt-pos")).to_have_text("2 of 6 (sealed)")
        expect(page.locator("#prog-practice")).to_have_text("1/6")
        browser.close()

    # the organiser exports and scores: humans go through the same scoring and leaderboard as any predictor
    results = tmp_path / "results"
    env = {"LOGITPRED_RESULTS": str(results)}
    for split in ("practice", "sealed"):
        done = logitpred("export", "--suite", "tiny", "--db", url, "--split", split, "--out", str(tmp_path / "out"),
                         "--score", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "human-alice-sealed.jsonl").read_text().splitlines()]
    top = lines[0]["top"]  # text -> p where each name is unique, else [[id, p]] (predictors.jsonl.readable)
    pairs = list(top.items()) if isinstance(top, dict) else top
    assert len(lines) == 1 and lines[0]["prompt_id"] == sealed[0].id and pairs[0][1] == 0.55
    board = leaderboard("tiny", "practice", root=results)
    assert set(board["predictor"]) == {"human:alice", "human-team"} and set(board["n"]) == {1}
    run = next(r for r in read_runs(results) if r["predictor"]["label"] == "human:alice" and r["split"] == "practice")
    scored = pd.read_csv(Path(run["_dir"]) / "per_prompt.csv")
    assert list(scored["prompt_id"]) == [practice[0].id]
    assert scored["kl_nats"][0] == pytest.approx(shown_kl, abs=5e-4)  # the page rounds to 3 decimals
