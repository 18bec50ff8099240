"""End to end, the trajectory mode (issue 12 part 7): the real page in headless Chromium (Debian's package, driven by
Playwright) against a real ``logitpred serve`` subprocess on the session's trajectory suite ``traj`` (a copy), with
the keyboard only: log in, answer a practice question on the log-scale slider, see the true probability and the
error, answer a sealed question in the log10 field and see nothing of the truth, then export and score with the CLI;
the error the page showed equals the one ``logitpred score`` computes from the exported file. On SQLite and
PostgreSQL (fixture ``human_db_url``). Needs /usr/bin/chromium (``make setup`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evals.human.client import serve
from evals.human.db import open_db
from evals.records import read_runs

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
pytestmark = pytest.mark.slow


def logitpred(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "logitpred"), *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


def shown(text: str) -> str:
    return text.replace(" ", "·").replace("\n", "↵\n").replace("\t", "→")


def test_trajectory_questions_in_a_real_browser(trajectory_home, tmp_path, monkeypatch, human_db_url):
    from playwright.sync_api import expect, sync_playwright

    from tasks import load_suite
    from tasks.trajectory import questions

    assert Path(CHROMIUM).is_file(), "Debian chromium is missing: run `make setup` (apt-get install chromium)"
    home = tmp_path / "home"
    shutil.copytree(trajectory_home, home, symlinks=True)
    monkeypatch.setenv("LOGITPRED_HOME", str(home))  # the server subprocess and the CLI inherit these
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger" / "submissions.jsonl"))
    suite = load_suite("traj")
    asked = {s: [q for q in questions(suite, s) if "continuation_id" in q] for s in ("practice", "sealed")}
    url = human_db_url
    db = open_db(url, suite)
    link = db.add_participant("bob")
    db.dispose()
    with serve("traj", url, log=tmp_path / "server.log") as (base, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/join/{link}")
        expect(page.locator("#login")).to_be_focused()
        page.keyboard.press("Enter")

        # the first practice question: the prompt, then its continuation marked, whitespace visible
        n = len(asked["practice"])
        expect(page.locator("#question-pos")).to_have_text(f"1 of {n} (practice)")
        q = asked["practice"][0]
        prompt = next(p.text for p in suite.prompts("practice") if p.id == q["prompt_id"])
        assert page.locator("#prompt").inner_text() == shown(prompt) + shown(q["text"])
        expect(page.locator("#prompt mark.cont-text")).to_have_text(shown(q["text"]))
        expect(page.locator("#lp")).to_be_focused()  # the slider has focus: the keyboard answers at once
        page.keyboard.press("End")  # 1 in 10
        for _ in range(25):
            page.keyboard.press("ArrowLeft")  # -1 - 25 * 0.1 = -3.5
        expect(page.locator("#lp-out")).to_have_text("1 in 3,200")
        expect(page.locator("#lp-num")).to_have_value("-3.5")
        page.keyboard.press("Enter")

        # practice feedback: the true probability and the signed error in orders of magnitude
        result = page.locator("#result")
        expect(result).to_contain_text("True probability: 1 in")
        text = result.inner_text()
        shown_error = float(re.search(r"Your error: ([+\-±][0-9.]+) orders of magnitude", text).group(1)
                            .replace("±", ""))
        true_log10 = float(re.search(r"True probability: 1 in [^(]+\(log10 P (-?[0-9.]+)\)", text).group(1))
        assert shown_error == pytest.approx(-3.5 - true_log10, abs=0.011)  # both printed to 2 decimals
        assert ("over-estimated" in text) == (shown_error > 0)
        assert "Running practice score: 1 answered" in text
        expect(page.locator("#next")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#question-pos")).to_have_text(f"2 of {n} (practice)")

        # the sealed round: the answer typed in the log10 field; nothing of the truth comes back
        page.locator("#tab-sealed").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#question-pos")).to_have_text(f"1 of {len(asked['sealed'])} (sealed)")
        expect(page.locator("#lp")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.locator("#lp-num")).to_be_focused()
        page.keyboard.press("Control+a")
        page.keyboard.type("-7.3")
        expect(page.locator("#lp-out")).to_have_text("1 in 2.0 × 10^7")
        page.keyboard.press("Enter")
        expect(result).to_contain_text(f"Saved (sealed answer 1 of {len(asked['sealed'])}")
        sealed_text = result.inner_text()
        assert "True probability" not in sealed_text and "error" not in sealed_text.lower()
        assert errors == []
        browser.close()

    # the organiser exports and scores with the CLI
    out = tmp_path / "out"
    for split in ("practice", "sealed"):
        done = logitpred("export", "--suite", "traj", "--db", url, "--split", split, "--out", str(out), "--score")
        assert done.returncode == 0, done.stdout + done.stderr
    listed = logitpred("participants", "list", "--suite", "traj", "--db", url)
    bob = next(line for line in listed.stdout.splitlines() if "bob" in line)
    assert f"1/{n}" in bob and f"{abs(shown_error):.2f}" in bob and f"1/{len(asked['sealed'])}" in bob, listed.stdout
    sealed_lines = [json.loads(x) for x in (out / "human-bob-sealed.jsonl").read_text().splitlines()]
    first = asked["sealed"][0]
    assert sealed_lines == [{"prompt_id": first["prompt_id"], "continuation_id": first["continuation_id"],
                             "log10prob": -7.3}]
    runs = {(r["predictor"]["label"], r["split"]): r for r in read_runs(tmp_path / "results")}
    assert set(runs) == {(who, s) for who in ("human:bob", "human-team") for s in ("practice", "sealed")}
    scored = pd.read_csv(Path(runs["human:bob", "practice"]["_dir"]) / "per_prompt.csv")
    assert list(scored["continuation_id"]) == [q["continuation_id"]]
    assert scored["pred_logprob"][0] == pytest.approx(-3.5 * 2.302585092994046, rel=1e-12)
    assert scored["error_log10"][0] == pytest.approx(shown_error, abs=5e-3 + 1e-9)  # the page rounds to 2 decimals
