"""Regenerate docs/img/human-form.png and human-feedback.png: the human form on the tiny suite, in headless Chromium.

    .venv/bin/logitpred suite build tiny        # once
    .venv/bin/python docs/img/human_form_screenshot.py

Runs a real ``logitpred serve`` with a throwaway database, logs one participant in and types two candidates (one
picked from the vocabulary suggestions); the PNGs are quantized to 128 colours to keep them small.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect, sync_playwright

from evals.human.client import serve
from evals.human.db import open_db
from tasks import load_suite

HERE = Path(__file__).parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def shrink(path: Path) -> None:
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)


def main() -> None:
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'human.sqlite'}"
    db = open_db(url, load_suite("tiny"))
    token = db.add_participant("ada")
    db.dispose()
    with serve("tiny", url) as (base, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 800})
        page.goto(f"{base}/join/{token}")
        expect(page.locator("#login")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#prompt .end")).to_have_count(1)
        page.keyboard.type(" emph")
        expect(page.locator(".sugg li").first).to_be_visible()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        page.keyboard.type("60")
        page.keyboard.press("Alt+a")
        page.keyboard.type(" focus on")
        expect(page.locator(".row").nth(1).locator(".tok")).to_have_count(2)
        page.keyboard.press("Tab")
        page.keyboard.type("15")
        page.locator(".row").nth(1).locator(".cont").focus()  # show the suggestion list as it looks while typing
        page.keyboard.press("End")
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")
        expect(page.locator(".row").nth(1).locator(".sugg li").first).to_be_visible()
        page.screenshot(path=HERE / "human-form.png")
        page.keyboard.press("Escape")
        page.locator(".row").nth(1).locator(".prob").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#result tbody tr")).to_have_count(10)
        page.screenshot(path=HERE / "human-feedback.png")
        browser.close()
    for name in ("human-form.png", "human-feedback.png"):
        shrink(HERE / name)
        print(f"wrote {HERE / name} ({(HERE / name).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
