"""End to end, the rare-behaviour mode (issue 13 part 4): the real page in headless Chromium (Debian's package, driven
by Playwright) against a real ``logitpred serve --rare-spec`` subprocess on the small reference set of
``test_human_rare_api`` (built in the session's data home), with the keyboard only: log in, answer a question on the
log-scale slider, see the true probability and the error, then export with the CLI and score with
``logitpred rare score``; the error the page showed equals the score's. On SQLite and PostgreSQL (``human_db_url``).
Needs /usr/bin/chromium (``make setup`` installs it).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from test_human_rare_api import rare_game, rare_spec  # noqa: F401 - the session fixtures
from test_human_trajectory_e2e import ARGS, CHROMIUM, logitpred

from evals.human.client import serve
from evals.records import read_runs

pytestmark = pytest.mark.slow


def test_rare_question_in_a_real_browser(rare_spec, rare_game, tmp_path, monkeypatch, human_db_url):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from tasks.rare.questions import truth

    assert Path(CHROMIUM).is_file(), "Debian chromium is missing: run `make setup` (apt-get install chromium)"
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    url = human_db_url
    added = logitpred("participants", "add", "bob", "--rare-spec", str(rare_spec), "--db", url)
    assert added.returncode == 0, added.stdout + added.stderr
    link = added.stdout.strip().rsplit("/join/", 1)[1]
    q = rare_game.questions[0]  # the first question: P_D(B) of the product distribution
    assert q.kind == "P_D(B)"
    with serve("wiki", url, options=("--rare-spec", str(rare_spec)), log=tmp_path / "server.log") as (base, _), \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/join/{link}")
        expect(page.locator("#login")).to_be_focused()
        page.keyboard.press("Enter")

        n = len(rare_game.questions)
        expect(page.locator("#question-pos")).to_have_text(f"1 of {n} (P_D(B))")
        expect(page.locator("#wording")).to_have_text(q.wording())
        expect(page.locator("#dist-desc")).to_contain_text('the text "The word", then one token at each of 2 positions')
        expect(page.locator("#dist tr")).to_have_count(2)
        expect(page.locator("#round-note")).to_contain_text("there is no sealed round")
        expect(page.locator("#lp")).to_be_focused()
        page.keyboard.press("End")  # 1 in 10
        for _ in range(25):
            page.keyboard.press("ArrowLeft")  # -3.5
        expect(page.locator("#lp-out")).to_have_text("1 in 3,200")
        page.keyboard.press("Enter")

        result = page.locator("#result")
        expect(result).to_contain_text("True probability: 1 in")
        text = result.inner_text()
        shown_error = float(re.search(r"Your error: ([+\-±][0-9.]+) orders of magnitude", text).group(1)
                            .replace("±", ""))
        true_log10 = math.log10(truth(rare_game.record)[(q.prompt_id, q.continuation_id)])
        assert f"(log10 P {true_log10:.2f})" in text
        assert shown_error == pytest.approx(-3.5 - true_log10, abs=0.006)
        expect(page.locator("#next")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#question-pos")).to_have_text(f"2 of {n} ({rare_game.questions[1].kind})")
        assert errors == []
        browser.close()

    out = tmp_path / "out"
    done = logitpred("export", "--rare-spec", str(rare_spec), "--db", url, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    mine = out / "human-bob-rare.jsonl"
    assert [json.loads(x) for x in mine.read_text().splitlines()] == [
        {"prompt_id": q.prompt_id, "continuation_id": q.continuation_id, "log10prob": -3.5}]
    scored = logitpred("rare", "score", str(mine), "--spec", str(rare_spec))
    assert scored.returncode == 0, scored.stdout + scored.stderr
    runs = [r for r in read_runs(tmp_path / "results") if r["questions"] == "rare"]
    assert len(runs) == 1 and runs[0]["predictor"]["label"] == "human:bob" and runs[0]["n_scored"] == 1
    per = pd.read_csv(Path(runs[0]["_dir"]) / "per_prompt.csv")
    assert per["error_log10"][0] == pytest.approx(shown_error, abs=5e-3 + 1e-9)  # the page rounds to 2 decimals
    assert per["error_log10"][0] == pytest.approx(-3.5 - true_log10, abs=1e-9)
    listed = logitpred("participants", "list", "--rare-spec", str(rare_spec), "--db", url)
    assert f"1/{n}" in next(line for line in listed.stdout.splitlines() if "bob" in line), listed.stdout
