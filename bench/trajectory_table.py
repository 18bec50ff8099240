"""Measured table of trajectory suites (issue 12 part 9): whole-continuation and step-wise scores per predictor.

Builds (or, with ``--home`` of an earlier run, reuses) one small trajectory suite per corpus (default ``wiki`` and
``sotu``: ``--practice`` + ``--sealed`` prompts, continuations of ``--m`` tokens: the realized one, ``--k`` sampled from
the target, and the behaviours of ``bench/behaviours.jsonl`` given after every prompt), then for every predictor
(default uniform, unigram, ngram, mixture, tiny-helper, gemma3-270m) and split:

- answers the whole-continuation questions (``realized`` and ``given``) in-process
  (``predictors.chain.answer_questions``: the predictor's fast path where it has one, else the generic chain rule)
  and scores them (``evals.trajectory_scoring.score_trajectory_predictions``): mean |log10 error| and share within 10x
  with 95% bootstrap CIs, the calibration slope and intercept of true on predicted log10 P, and mean |log10 error|
  per kind;
- when ``evals.stepwise`` exists, runs the step-wise rounds along the sampled continuations
  (``evals.stepwise.run_stepwise``, released one step at a time) and reports the **trajectory KL** with its CI.

Sealed values are shown as ``logitpred run`` shows them, on the holdout grid (``evals.cli.common.released``).

The suites, truth, holdout ledger and run records go to a fresh temporary data folder (``LOGITPRED_HOME`` and
``LOGITPRED_RESULTS`` under ``--home``, default a new temp folder), so the repo's own ledger of sealed scorings is not
consumed; converted models come from the repo's model cache (``.logitpred/models``), and the repo's token caches,
predictor indexes, trained helpers, cross-tokenizer maps and approval registry are hard-linked or copied in (so the
table shows the approvals as they stand: a predictor without a valid record runs only with ``--allow-unapproved`` and
is marked "(unapproved)"). Seeds are fixed (suite seed 0, sampling seed 0, bootstrap seed ``--seed``). Output: the
table on stdout and, as markdown with machine, date, command, versions, commitments and run times, in ``--out``.

    .venv/bin/python bench/trajectory_table.py [--corpora wiki sotu] [--practice 20] [--sealed 20] [--m 8] [--k 2]
        [-p uniform -p unigram ...] [--allow-unapproved] [--threads 1] [--home DIR] [--out docs/trajectory_table.md]

No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREDICTORS = ["uniform", "unigram", "ngram", "mixture", "tiny-helper", "gemma3-270m"]


def seed_home(home: Path) -> list[str]:
    """Link the repo's caches and helpers into ``home`` (``trajectories.link_caches``) and copy its approval registry
    (the approvals as they stand); returns what was brought in."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trajectories import link_caches

    done = link_caches(home, ("tokens", "indexes", "helpers", "crosstok"))
    reg = REPO / ".logitpred" / "approvals.json"
    if reg.is_file() and not (home / "approvals.json").exists():
        shutil.copy2(reg, home / "approvals.json")
        done.append("approvals.json")
    return done


def build(name: str, corpus: str, args: argparse.Namespace) -> tuple[float, str]:
    """``logitpred suite build`` (reused when an identical suite is built); returns (seconds, its output)."""
    cli = Path(sys.executable).parent / "logitpred"
    cmd = [str(cli), "suite", "build", name, "--corpus", corpus, "--continuation", str(args.m), "--samples",
           str(args.k), "--behaviours", os.path.relpath(args.behaviours, REPO), "--practice", str(args.practice),
           "--sealed", str(args.sealed)]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ)
    if res.returncode:
        sys.exit(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return time.perf_counter() - t, res.stdout


def fmt(cell: list[float] | tuple[float, ...] | None, digits: int = 2) -> str:
    if cell is None:
        return "-"
    e, lo, hi = cell
    if e != e:  # NaN (a constant prediction has no calibration fit)
        return "n/a"
    return f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def est(cell: list[float] | tuple[float, ...]) -> str:
    return "n/a" if cell[0] != cell[0] else f"{cell[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", default=["wiki", "sotu"])
    ap.add_argument("--practice", type=int, default=20)
    ap.add_argument("--sealed", type=int, default=20)
    ap.add_argument("--m", type=int, default=8, help="continuation tokens")
    ap.add_argument("--k", type=int, default=2, help="sampled continuations per prompt")
    ap.add_argument("--behaviours", default=str(REPO / "bench" / "behaviours.jsonl"))
    ap.add_argument("-p", "--predictor", action="append", help=f"predictors (default: {' '.join(PREDICTORS)})")
    ap.add_argument("--allow-unapproved", action="store_true", help="run unapproved helpers, marked (unapproved)")
    ap.add_argument("--no-steps", action="store_true", help="skip the step-wise rounds (trajectory KL)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--home", help="data folder (default: a fresh temporary one); reuse one to reuse its suites")
    ap.add_argument("--out", default=str(REPO / "docs" / "trajectory_table.md"), help="markdown file ('-': none)")
    args = ap.parse_args()
    names = args.predictor or PREDICTORS
    started, t_all = datetime.now(UTC), time.perf_counter()
    load0 = os.getloadavg()[0]

    home = Path(args.home or tempfile.mkdtemp(prefix="logitpred-trajectory-table-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["LOGITPRED_HOME"] = str(home)
    os.environ["LOGITPRED_RESULTS"] = str(home / "results")
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", str(REPO / ".logitpred" / "models"))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    brought = seed_home(home)
    print(f"data folder {home} (brought in from the repo: {', '.join(brought) or 'nothing'})", flush=True)

    suites, build_s = {}, {}
    for corpus in args.corpora:
        name = f"{corpus}-traj-m{args.m}k{args.k}-{args.practice}x{args.sealed}"
        build_s[name], log = build(name, corpus, args)
        print(f"suite {name}: {build_s[name]:.0f} s\n{log.strip()}", flush=True)
        suites[name] = corpus

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from evals.cli.common import released
    from evals.records import environment
    from evals.trajectory_scoring import score_trajectory_predictions
    from predictors import PredictorContext, create_with_approval
    from predictors.chain import answer_questions, split_questions
    from tasks import load_suite
    from tasks.trajectory import load_trajectories

    try:
        from evals.stepwise import run_stepwise
    except ImportError:  # step-wise questions not in this checkout: no trajectory KL column
        run_stepwise = None
    steps = run_stepwise is not None and not args.no_steps

    rows, info, timing = [], [], []
    for name in suites:
        s = load_suite(name)
        traj = load_trajectories(s)
        ctx = PredictorContext.from_suite(s)
        cfg, tm = s.manifest["config"], s.manifest["trajectory"]
        counts = {sp: {} for sp in ("practice", "sealed")}
        for sp in counts:
            for c in traj.split(sp).continuations:
                counts[sp][c.kind] = counts[sp].get(c.kind, 0) + 1
        given = tm.get("behaviours", {}).get("given", {})
        info.append(f"- `{name}`: corpus {cfg['corpus']}, {s.manifest['sizes']['practice']} practice + "
                    f"{s.manifest['sizes']['sealed']} sealed prompts, M={tm['continuation']}, K={tm['samples']}; "
                    f"questions per split: {counts['practice']} / {counts['sealed']} (practice / sealed; given pairs "
                    f"left out for a boundary merge or length: {given.get('practice', {}).get('left_out', 0)} / "
                    f"{given.get('sealed', {}).get('left_out', 0)}); version `{s.version}`, sealed commitment "
                    f"`{s.commitment}`, trajectory commitment `{traj.commitment}`; `suite build` took {build_s[name]:.0f} s "
                    "(reused when already built in --home)")
        for pname in names:
            t0 = time.perf_counter()
            try:
                p, approval = create_with_approval(pname, ctx, {}, allow_unapproved=args.allow_unapproved)
            except (KeyError, TypeError, ValueError) as e:  # ApprovalError (not approved), HelperError
                print(f"skipped {pname} on {name}: {e}", flush=True)
                info.append(f"- skipped `{pname}` on `{name}`: {str(e).splitlines()[0]}")
                continue
            t_create = time.perf_counter() - t0
            label = pname + ("" if approval["approved"] else " (unapproved)")
            for sp in ("practice", "sealed"):
                t1 = time.perf_counter()
                questions = split_questions(s, sp)
                try:
                    answers = answer_questions(p, ctx, questions)
                except ValueError as e:  # a fast path that cannot run here (TargetError): the generic chain rule
                    answers = answer_questions(p, ctx, questions, generic=True)
                    answers.notes.append(f"fast path failed ({e}); all answered by the generic chain rule")
                    answers.method += f" (fast path failed: {type(e).__name__})"
                    info.append(f"- `{pname}` on `{name}`/{sp}: fast path failed ({e}); answered by the generic "
                                "chain rule instead")
                meta = {"name": pname, "options": {}, **getattr(p, "identity", lambda: {})(), **approval,
                        "trajectory": {"answered_by": answers.method, "generic_fallbacks": answers.generic,
                                       "notes": answers.notes}}
                result = score_trajectory_predictions(s, sp, answers.predictions, predictor=meta, seed=args.seed)
                t_whole = time.perf_counter() - t1
                m = result.summary["metrics"]
                cell = {k: released(sp, k, *m["all"][k]) for k in ("mean_abs_log10_error", "within_10x_share",
                                                                     "calibration_slope", "calibration_intercept")}
                kinds = {kind: released(sp, "mean_abs_log10_error", *m[kind]["mean_abs_log10_error"])
                         for kind in ("realized", "given") if kind in m}
                kl, t_steps = None, 0.0
                if steps:
                    t2 = time.perf_counter()
                    st = run_stepwise(s, sp, p, ctx, predictor_meta={k: v for k, v in meta.items()
                                                                     if k != "trajectory"}, seed=args.seed)
                    kl = released(sp, "trajectory_kl", *st.summary["metrics"]["trajectory_kl"]["total"])
                    t_steps = time.perf_counter() - t2
                rows.append({"predictor": label, "suite": name, "corpus": cfg["corpus"], "split": sp, **cell,
                             "kinds": kinds, "trajectory_kl": kl, "n": result.summary["n_scored"],
                             "method": answers.method, "fallbacks": answers.generic})
                timing.append((label, name, sp, t_create if sp == "practice" else 0.0, t_whole, t_steps))
                print(f"{label:26s} {name}/{sp:8s} |log10 err| {fmt(cell['mean_abs_log10_error'])} within 10x "
                      f"{fmt(cell['within_10x_share'])} slope {fmt(cell['calibration_slope'])} trajectory KL "
                      f"{fmt(kl)} ({t_create if sp == 'practice' else 0:.0f} + {t_whole:.0f} + {t_steps:.0f} s)",
                      flush=True)
                for note in answers.notes:
                    print(f"  note: {note}", flush=True)

    total = time.perf_counter() - t_all
    env = environment()
    head = ["predictor", "corpus", "split", "questions", "mean abs log10 error [95% CI]", "within 10x [95% CI]",
            "calibration slope [95% CI]", "calibration intercept", "abs log10 error: realized / given",
            "trajectory KL, nats [95% CI]"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kinds = " / ".join(f"{r['kinds'][k][0]:.2f}" if k in r["kinds"] else "-" for k in ("realized", "given"))
        table.append("| " + " | ".join([r["predictor"], r["corpus"], r["split"], str(r["n"]),
                                        fmt(r["mean_abs_log10_error"]), fmt(r["within_10x_share"]),
                                        fmt(r["calibration_slope"]), est(r["calibration_intercept"]), kinds,
                                        fmt(r["trajectory_kl"])]) + " |")
    methods = sorted({(r["predictor"], r["method"], r["fallbacks"]) for r in rows})
    times = ["| predictor | suite | split | create s | whole continuations s | step-wise s |", "|---|---|---|---|---|---|"]
    times += [f"| {a} | {b} | {c} | {d:.1f} | {e:.1f} | {f:.1f} |" for a, b, c, d, e, f in timing]
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = [
        "# Measured trajectory table",
        "",
        f"Produced by `OMP_NUM_THREADS={args.threads or 'default'} .venv/bin/python bench/trajectory_table.py"
        f"{' ' + argv if argv else ''}` on {started:%Y-%m-%d %H:%M} UTC in {total / 60:.1f} min; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end), torch threads {torch.get_num_threads()}; "
        f"git {env.get('git_commit', '?')[:12]} (uncommitted changes in tracked files: {env.get('git_dirty', '?')}); "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("git_commit", "git_dirty", "platform")) + ".",
        "",
        "Suites (fresh data folder; seeds 0; behaviour file `bench/behaviours.jsonl`):",
        "",
        *info,
        "",
        "Sealed rows are released on the holdout grid (0.05 for log10 errors, slopes and nats, 0.01 for shares), as "
        "`logitpred run` shows them; practice rows are exact. Whole-continuation questions are the `realized` and "
        "`given` continuations; the trajectory KL is measured step by step along the `sampled` ones (never shown "
        "whole). A prediction that gives every question the same log-probability has no calibration fit (n/a).",
        "",
        *table,
        "",
        "How each predictor answered the whole-continuation questions (generic: chain rule over its next-token "
        "predictions; fallbacks: questions its fast path left to the generic rule):",
        "",
        *[f"- {a}: {b}" + (f" ({c} fallbacks)" if c else "") for a, b, c in methods],
        "",
        "Run times (seconds; noisy on a shared machine):",
        "",
        *times,
        "",
    ]
    text = "\n".join(md)
    print("\n" + "\n".join(table))
    print(f"\ntotal {total / 60:.1f} min")
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
