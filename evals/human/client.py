"""A small Python client of the human form, and a way to run ``logitpred serve`` as a real subprocess.

Used by the load benchmark (``bench/form_load.py``) and the tests that need a real uvicorn process (durability under
``kill -9``, the browser tests); participants themselves use the web page. Leaves out: anything the page cannot do.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(suite: str, db_url: str, *, port: int | None = None, options: tuple[str, ...] = (),
          log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``logitpred serve`` on loopback until the block ends; yields (base URL, process)."""
    port = port or free_port()
    cmd = [str(Path(sys.executable).parent / "logitpred"), "serve", "--suite", suite, "--db", db_url, "--port", str(port), *options]
    out = open(log, "w") if log else subprocess.DEVNULL  # closed below
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"logitpred serve exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"logitpred serve did not answer at {base} within {timeout} s")


class Participant:
    """A logged-in participant: ``answer()`` posts like the page does (JSON with the CSRF header)."""

    def __init__(self, base: str, token: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base, timeout=timeout)
        page = self.http.get(f"/join/{token}")
        page.raise_for_status()
        form_token = FORM_TOKEN.search(page.text).group(1)
        r = self.http.post("/join", data={"token": token, "form_token": form_token})
        if r.status_code != 303:
            raise RuntimeError(f"login failed with HTTP {r.status_code}: {r.text[:200]}")
        self.me = self.http.get("/api/me").raise_for_status().json()

    def next(self, split: str) -> dict[str, Any]:
        return self.http.get("/api/next", params={"split": split}).raise_for_status().json()

    def answer(self, prompt_id: str, candidates: list[dict[str, Any]], rest: str = "unigram",
               mode: str = "list") -> httpx.Response:
        body = {"prompt_id": prompt_id, "candidates": candidates, "rest": rest, "mode": mode}
        return self.http.post("/api/answer", json=body, headers={"x-csrf-token": self.me["csrf"]})

    def close(self) -> None:
        self.http.close()
