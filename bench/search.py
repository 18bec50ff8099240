"""Benchmark: prompt search methods on reversing fixed outputs (issue 14 part 6), on the real target (SmolLM2-135M).

As in Jones et al. 2023's ARCA audits ("Automatically Auditing Large Language Models via Discrete Optimization",
§4: reversing a fixed output o into a prompt x whose greedy continuation is o), for each behaviour o of
``bench/search_behaviours.jsonl`` (short fixed outputs of 1-4 target tokens: names, words, insults, phrases) and each
method (``gcg``, ``beam``, ``random``: ``tasks.search``), one ``run_search`` at the same budget of target passes per
(behaviour, λ) run, the same template (``--prefix`` + ``--free`` tokens), seed, and R = the target. Reported:

- **success rate**: share of behaviours whose best prompt at λ = 0 (the highest log P(o | x) among every prompt the
  search evaluated, ``tasks.search.results``) has a greedy continuation that starts with o (``greedy_is_behaviour``);
  and, beside it, the share with any such prompt on the search's Pareto frontier;
- **median log P(o | x) at matched budget**: over behaviours, of that best prompt at λ = 0 (natural log);
- **median log P(o | x) at fixed plausibility**: over behaviours, the best log P(o | x) among the frontier's prompts
  whose per-token log P_R(x) >= ``--bar`` (the frontier holds the maximiser for every bar, ``tasks.search.frontier``);
  a behaviour with no prompt above the bar counts as -inf (the count is printed);
- **per-call cost**: wall seconds per target pass (a run's wall time over the passes it spent, median over
  behaviours), measured on this machine with its load printed; and passes spent per run.

The λ grid (``--lambdas``, default ``0``) is searched at the budget per λ; with ``0,1`` the fixed-plausibility column
also sees the λ = 1 runs' more plausible prompts (and every method spends twice the passes). Search states are kept
in ``--data`` (one folder per (method, behaviour) and settings hash): a killed benchmark run again resumes each search
where it stopped, and finished ones are read back without running the target (their recorded seconds reused).

    .venv/bin/python bench/search.py                                   # the full run: 25 behaviours x 3 methods,
                                                                       # budget 400, λ 0 and 1 (hours on 2 CPUs)
    .venv/bin/python bench/search.py --behaviours 20 --budget 100 --lambdas 0 --threads 1   # the reduced run
        [--methods gcg,beam,random] [--free 3] [--prefix TEXT] [--bar -6] [--seed 0] [--out rows.jsonl]
        [--file bench/search_behaviours.jsonl] [--data DIR]

No timing is asserted; the seconds printed depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def best_above(front: list[dict[str, Any]], bar: float) -> float:
    """The highest ``log_p`` among frontier records with ``ref_per_token >= bar``; -inf when none is."""
    vals = [r["log_p"] for r in front if r["ref_per_token"] >= bar]
    return max(vals) if vals else -math.inf


def run_one(args: argparse.Namespace, target: Any, sb: Any, template: Any, method: str) -> dict[str, Any]:
    """One (behaviour, method) search at the benchmark's settings; its row (module doc)."""
    from tasks.search import Reference, results, run_search
    from tasks.search.driver import settings
    from tasks.search.methods import check_options, get
    from tasks.search.state import settings_sha256

    ref = Reference(target.model, target.tokenizer, target.bos_ids, {"kind": "target", **target.identity.to_dict()},
                    template, is_target=True, same_tokenizer=True)
    opts = check_options(get(method), {})
    cfg = settings([sb], template, method, opts, args.lambdas, args.budget, args.seed, ref, target.identity.id)
    folder = args.data / f"{method}-{sb.id}-{settings_sha256(cfg)[:12]}"
    timing = folder / "seconds.json"
    t0 = time.time()
    state = run_search(target, [sb], template, ref, method=method, lambdas=args.lambdas, budget=args.budget,
                       seed=args.seed, state_path=folder / "state.json", options=opts, proposer=ref)
    seconds = time.time() - t0
    if timing.is_file():  # finished before: the target did not run now, report the recorded time
        seconds = json.loads(timing.read_text())["seconds"]
    else:
        timing.write_text(json.dumps({"seconds": seconds, "load": load()}))
    front, best = results(state)
    b0 = next(r for r in best if r["lambda"] == 0.0) if 0.0 in args.lambdas else max(best, key=lambda r: r["log_p"])
    passes = sum(r["counters_spent"] for r in state["runs"].values())
    return {"behaviour": sb.id, "text": sb.text, "tokens": len(sb.behaviour.members[0]), "method": method,
            "budget": args.budget, "lambdas": args.lambdas, "seed": args.seed, "passes": passes,
            "seconds": round(seconds, 2), "seconds_per_pass": seconds / passes if passes else None,
            "best_log_p": b0["log_p"], "best_ref_per_token": b0["ref_per_token"],
            "best_prompt": b0["prompt_text"], "success": bool(b0["greedy_is_behaviour"]),
            "success_frontier": any(r["greedy_is_behaviour"] for r in front),
            "best_log_p_above_bar": best_above(front, args.bar), "bar": args.bar,
            "frontier_points": len(front)}


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(f"\n## Reversing fixed outputs: {len({r['behaviour'] for r in rows})} behaviours, prefix {args.prefix!r} + "
          f"{args.free} free tokens, budget {args.budget} target passes per (behaviour, λ) run, λ {args.lambdas}, "
          f"seed {args.seed}, R = the target, bar = per-token log P_R(x) >= {args.bar}\n")
    print("| method | behaviours | success (best at λ=0: greedy = o) | any frontier prompt greedy = o | median log P(o|x) "
          "at matched budget | median per-token log P_R of that prompt | median best log P(o|x) with per-token "
          "log P_R >= bar | behaviours with a prompt above the bar | passes per run (median) | seconds per target "
          "pass (median) | seconds per run (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in args.methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        above = np.array([r["best_log_p_above_bar"] for r in rs])
        print(f"| {m} | {len(rs)} | {np.mean([r['success'] for r in rs]):.0%} | "
              f"{np.mean([r['success_frontier'] for r in rs]):.0%} | {np.median([r['best_log_p'] for r in rs]):.2f} | "
              f"{np.median([r['best_ref_per_token'] for r in rs]):.2f} | {np.median(above):.2f} | "
              f"{int(np.isfinite(above).sum())} | {np.median([r['passes'] for r in rs]):.0f} | "
              f"{np.median([r['seconds_per_pass'] for r in rs]):.3f} | {np.median([r['seconds'] for r in rs]):.0f} |")
    print("\nPer behaviour, best log P(o | x) at λ = 0 (greedy = o marked *), by method:\n")
    print("| o | tokens | " + " | ".join(args.methods) + " |")
    print("|---|---|" + "---|" * len(args.methods))
    for bid in dict.fromkeys(r["behaviour"] for r in rows):
        cells = {r["method"]: r for r in rows if r["behaviour"] == bid}
        first = next(iter(cells.values()))
        print(f"| `{first['text'].strip()}` | {first['tokens']} | " + " | ".join(
            f"{cells[m]['best_log_p']:.2f}{'*' if cells[m]['success'] else ''}" if m in cells else "-"
            for m in args.methods) + " |")
    wins = {}
    for a in args.methods:
        for b in args.methods:
            if a < b:
                pairs = [(x, y) for x in rows for y in rows if x["behaviour"] == y["behaviour"] and x["method"] == a
                         and y["method"] == b]
                wins[(a, b)] = (sum(x["best_log_p"] > y["best_log_p"] for x, y in pairs), len(pairs))
    print("\nPaired (same behaviour): " + "; ".join(f"{a} beats {b} on {w} of {n}" for (a, b), (w, n) in wins.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=REPO / "bench" / "search_behaviours.jsonl")
    ap.add_argument("--behaviours", type=int, default=0, help="the first N behaviours of the file (default all)")
    ap.add_argument("--methods", type=lambda s: s.split(","), default=["gcg", "beam", "random"])
    ap.add_argument("--budget", type=int, default=400, help="target passes per (behaviour, λ) run")
    ap.add_argument("--lambdas", type=lambda s: sorted({float(x) for x in s.split(",")}), default=[0.0, 1.0])
    ap.add_argument("--free", type=int, default=3)
    ap.add_argument("--prefix", default="I think that")
    ap.add_argument("--bar", type=float, default=-6.0, help="plausibility bar: per-token log P_R(x), nats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data", type=Path, default=REPO / ".logitpred" / "bench" / "search")
    ap.add_argument("--out", type=Path, default=None, help="append every row here as JSON lines")
    args = ap.parse_args()
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", str(REPO / ".logitpred" / "models"))
    args.data = args.data.resolve()
    args.data.mkdir(parents=True, exist_ok=True)

    import torch

    from tasks import load_target
    from tasks.search import make_template
    from tasks.search.driver import behaviour_from_text
    from tasks.search.methods import REGISTRY
    from tasks.trajectory.behaviours import parse_behaviours

    bad = [m for m in args.methods if m not in REGISTRY]
    if bad:
        sys.exit(f"unknown method(s) {bad}: use {sorted(REGISTRY)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    print(f"bench/search.py on {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {load()}", flush=True)
    target = load_target()
    items = parse_behaviours(args.file.read_bytes(), str(args.file))
    if args.behaviours:
        items = items[: args.behaviours]
    behs = [behaviour_from_text(b.id, b.text, target.tokenizer) for b in items]
    for sb in behs:
        n = len(sb.behaviour.members[0])
        if not 1 <= n <= 4:
            sys.exit(f"behaviour {sb.id!r} ({sb.text!r}) is {n} target tokens: the benchmark takes 1-4")
    template = make_template(target.tokenizer, args.prefix, args.free, bos=target.bos_ids, context=target.context,
                             longest_member=max(len(sb.behaviour.members[0]) for sb in behs),
                             vocab_size=target.vocab_size)
    rows = []
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed at the end
    for sb in behs:
        for m in args.methods:
            row = run_one(args, target, sb, template, m)
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
            print(f"  {sb.id} {m}: best log P {row['best_log_p']:.2f} (per-token log P_R "
                  f"{row['best_ref_per_token']:.2f}){' greedy = o' if row['success'] else ''}, above bar "
                  f"{row['best_log_p_above_bar']:.2f}, {row['passes']} passes, {row['seconds']:.0f} s, load {load()}",
                  flush=True)
    if out:
        out.close()
    report(args, rows)
    print(f"\ntotal {time.time() - start:.0f} s, load average at the end {load()}")


if __name__ == "__main__":
    main()
