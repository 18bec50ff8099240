"""Benchmark: 50 simulated participants using the human form at once, on loopback, against a real ``logitpred serve``.

Each participant logs in through its invitation and then does what the page does for every prompt: fetch the next
prompt, one vocabulary lookup, one tokenization, one answer (alternating practice and sealed prompts; practice answers
are scored for feedback). Two phases run side by side in one run, against the same server:
- ``paced``: each participant waits ``--think`` seconds (exponential, mean 0.5 s) between requests: still far faster
  than a person, who takes seconds per prompt;
- ``flat-out``: no waiting, 50 requests always in flight: the server's capacity on this machine.
It reports p50/p99 latency of answers and of all requests, answers/s, and the ratio of the two phases; afterwards it
stops the server and checks that the database holds exactly the answers the server acknowledged. The sealed rate limit
is lifted for the run (``--sealed-per-minute 1000000``); client and server share this machine's cores.

    .venv/bin/python bench/form_load.py [--suite wiki] [--users 50] [--seconds 15] [--think 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from evals.human.client import FORM_TOKEN, serve
from evals.human.db import open_db
from tasks import load_suite

WORDS = [" the", " of", " and", " in", " a", " to", " was", " is", " for", " as", " by", " with", " on", " that"]


class User:
    def __init__(self, base: str, tokens: list[str], think: float, rng: random.Random) -> None:
        self.base, self.tokens, self.think, self.rng = base, tokens, think, rng
        self.http: httpx.AsyncClient | None = None
        self.turn = 0

    async def login(self) -> bool:
        if self.http:
            await self.http.aclose()
        if not self.tokens:
            return False
        token = self.tokens.pop()
        self.http = httpx.AsyncClient(base_url=self.base, timeout=60)
        page = await self.http.get(f"/join/{token}")
        r = await self.http.post("/join", data={"token": token, "form_token": FORM_TOKEN.search(page.text)[1]})
        assert r.status_code == 303, r.text
        self.csrf = (await self.http.get("/api/me")).json()["csrf"]
        return True

    async def timed(self, kind: str, log: list, method: str, path: str, **kw) -> httpx.Response:
        if self.think:
            await asyncio.sleep(self.rng.expovariate(1 / self.think))
        t = time.perf_counter()
        r = await self.http.request(method, path, **kw)
        log.append((kind, time.perf_counter() - t, r.status_code))
        return r

    async def run(self, until: float, log: list, acked: list) -> None:
        while time.monotonic() < until:
            split = ("practice", "sealed")[self.turn % 2]
            self.turn += 1
            nxt = (await self.timed("next", log, "GET", "/api/next", params={"split": split})).json()
            if nxt["done"]:
                other = await self.http.get("/api/next", params={"split": "sealed" if split == "practice" else
                                                                  "practice"})
                if other.json()["done"] and not await self.login():
                    return
                continue
            word = self.rng.choice(WORDS)
            await self.timed("vocab", log, "GET", "/api/vocab", params={"q": word[:3]})
            await self.timed("tokenize", log, "GET", "/api/tokenize", params={"text": word + " thing"})
            body = {"prompt_id": nxt["prompt"]["id"], "rest": "unigram",
                    "candidates": [{"text": word, "p": round(self.rng.uniform(0.05, 0.6), 3)}]}
            r = await self.timed(f"answer-{split}", log, "POST", "/api/answer", json=body,
                                 headers={"x-csrf-token": self.csrf})
            if r.status_code == 200:
                acked.append(r.json()["submission_id"])


async def phase(base: str, pool: list[str], users: int, seconds: float, think: float, seed: int) -> dict:
    per = len(pool) // users
    people = [User(base, pool[i * per:(i + 1) * per], think, random.Random(seed + i)) for i in range(users)]
    await asyncio.gather(*(u.login() for u in people))
    log: list = []
    acked: list = []
    start = time.monotonic()
    await asyncio.gather(*(u.run(start + seconds, log, acked) for u in people))
    wall = time.monotonic() - start
    for u in people:
        await u.http.aclose()
    return {"log": log, "acked": acked, "wall": wall}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to report server CPU per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def report(name: str, res: dict) -> dict:
    log = res["log"]
    answers = [d for k, d, s in log if k.startswith("answer") and s == 200]
    every = [d for _, d, _ in log]
    bad = [(k, s) for k, _, s in log if s != 200]
    row = {"phase": name, "answers": len(res["acked"]), "answers_s": len(res["acked"]) / res["wall"],
           "answer_p50": pct(answers, 50), "answer_p99": pct(answers, 99), "all_p50": pct(every, 50),
           "all_p99": pct(every, 99), "requests": len(log), "errors": len(bad),
           "cpu_ms": 1e3 * res["cpu"] / max(1, len(log))}
    by_kind = {k: [d for kk, d, s in log if kk == k] for k in sorted({k for k, _, _ in log})}
    print(f"\n{name}: {row['requests']} requests in {res['wall']:.1f} s, {row['errors']} non-200 {bad[:3]}; "
          f"server CPU {row['cpu_ms']:.2f} ms per request")
    for k, ds in by_kind.items():
        print(f"  {k:16s} n={len(ds):6d}  p50 {pct(ds, 50):7.1f} ms  p99 {pct(ds, 99):7.1f} ms")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="wiki")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--think", type=float, default=0.5, help="mean pause between requests in the paced phase (s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    suite = load_suite(args.suite)
    folder = Path(tempfile.mkdtemp(prefix="logitpred-form-load-"))
    url = f"sqlite:///{folder / 'human.sqlite'}"
    db = open_db(url, suite)
    n_prompts = sum(suite.manifest["sizes"].values())
    # enough participants that nobody runs out of prompts within a phase, even flat out
    per_user = max(2, int(args.seconds * 40 / n_prompts) + 2)
    pools = {ph: [db.add_participant(f"{ph}-{i}") for i in range(args.users * per_user)] for ph in ("paced", "flat")}
    db.dispose()
    print(f"suite {suite.name} ({n_prompts} prompts), {args.users} participants per phase, {args.seconds:.0f} s each, "
          f"database {url}; {os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.1f}")
    with serve(suite.name, url, options=("--sealed-per-minute", "1000000"), log=folder / "server.log") as (base, proc):
        cpu0 = cpu_seconds(proc.pid)
        paced = asyncio.run(phase(base, pools["paced"], args.users, args.seconds, args.think, args.seed))
        cpu1 = cpu_seconds(proc.pid)
        flat = asyncio.run(phase(base, pools["flat"], args.users, args.seconds, 0.0, args.seed + 10_000))
        cpu2 = cpu_seconds(proc.pid)
    paced["cpu"], flat["cpu"] = cpu1 - cpu0, cpu2 - cpu1
    print(f"load average after: {os.getloadavg()[0]:.1f} (other work on this machine inflates the tails)")
    rows = [report(f"paced (think {args.think} s)", paced), report("flat-out", flat)]
    acked = len(paced["acked"]) + len(flat["acked"])
    with sqlite3.connect(folder / "human.sqlite") as con:
        stored = con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    print("\n| phase | answers | answers/s | answer p50 ms | answer p99 ms | all p50 ms | all p99 ms | server CPU "
          "ms/request | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['answers']} | {r['answers_s']:.1f} | {r['answer_p50']:.1f} | "
              f"{r['answer_p99']:.1f} | {r['all_p50']:.1f} | {r['all_p99']:.1f} | {r['cpu_ms']:.2f} | {r['errors']} |")
    print(f"\nflat-out / paced: answers/s x{rows[1]['answers_s'] / rows[0]['answers_s']:.2f}, "
          f"answer p99 x{rows[1]['answer_p99'] / rows[0]['answer_p99']:.2f}")
    print(f"stored {stored} == acknowledged {acked}: {'OK' if stored == acked else 'MISMATCH'}; "
          f"paced answer p99 {rows[0]['answer_p99']:.1f} ms vs target 100 ms: "
          f"{'met' if rows[0]['answer_p99'] < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
