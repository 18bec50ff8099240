"""``logitpred score FILE``: validate a predictions file and score it against a suite split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import InputFile, SplitOpt, SuiteOpt, console, fail, load_suite, out, released

KEYS = ("kl_nats", "kl_bits", "reverse_kl_nats", "js_bits", "tv", "brier", "top1", "top10_overlap",
        "ce_realized_nats", "target_ce_realized_nats", "target_entropy_nats")


def read_meta(file: Path) -> dict | None:
    """``FILE.meta.json`` as written by ``logitpred predict`` (strict JSON), or None without one."""
    from tasks.io import read_json

    meta_path = Path(str(file) + ".meta.json")
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
    except (ValueError, UnicodeDecodeError) as e:  # malformed JSON, a duplicate key, not UTF-8
        fail(f"{meta_path} is not a valid predictions meta file ({e}): fix or delete it, and name the predictor "
             "with --name")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        fail(f"{meta_path} must be a JSON object with a string 'name': fix or delete it, and use --name")
    return meta


def score(
    file: InputFile,
    suite: SuiteOpt = "wiki",
    split: SplitOpt = "practice",
    name: Annotated[str | None, typer.Option(help="Predictor label in results (default: from FILE.meta.json).")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any rejected line or missing prompt.")] = False,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    allow_unapproved: Annotated[bool, typer.Option(help="Exploratory: score a file whose predictor is not approved "
                                                        "(now); the result is marked unapproved.")] = False,
    round_: Annotated[int | None, typer.Option("--round", min=1, help="Trajectory suites: FILE answers the step-wise "
                                               "questions of step T (next-token format; `suite questions --round "
                                               "T`); step T is refused before step T-1 is scored.")] = None,
) -> None:
    """Validate and score a predictions file; writes results/<run-id>/ (per-prompt CSV, summary JSON)."""
    from predictors.approval import ApprovalError, file_approval
    from tasks import SuiteError

    from ..holdout import HoldoutError
    from ..scoring import ScoringError
    from ..stream_scoring import score_file

    s = load_suite(suite)
    found = read_meta(file)
    meta = dict(found or {"name": file.stem})
    try:  # the one approval rule, before anything reaches the sealed ledger
        meta.update(file_approval(found, allow_unapproved=allow_unapproved))
    except ApprovalError as e:
        fail(str(e))
    if not meta["approved"]:
        console.print(f"[yellow]exploratory:[/] {meta['approval']}; the result is marked unapproved")
    if name:
        meta["label"] = name
    from tasks.trajectory import spec

    if round_ is not None:
        if spec(s) is None:
            fail(f"--round: suite {s.name!r} is a next-token suite; step-wise rounds belong to trajectory suites with "
                 "samples")
        return score_step_round(s, split, round_, file, meta, seed=seed)
    if spec(s) is not None:  # a trajectory suite asks whole-continuation questions
        return score_trajectories(s, split, file, meta, strict=strict, seed=seed)

    def report(preds: Any) -> None:  # the rejected lines, before a strict or empty file is refused
        for msg in preds.errors[:20]:
            console.print(f"[yellow]rejected[/] {msg}", markup=True, highlight=False)
        if len(preds.errors) > 20:
            console.print(f"[yellow]... and {len(preds.errors) - 20} more rejected lines[/]")

    try:  # validated and scored as one stream: full vectors never all held (evals/stream_scoring.py)
        result = score_file(s, split, file, predictor=meta, strict=strict, seed=seed, on_validated=report)
    except SuiteError as e:
        fail(str(e))
    except (ScoringError, HoldoutError) as e:
        fail(str(e), code=1)
    summ = result.summary
    m = summ["metrics"]
    table = Table("metric", "mean [95% CI]", "median", "p90", "max", title=f"{meta.get('label', meta['name'])} on "
                  f"{s.name}/{split}: {summ['n_scored']} scored, {summ['n_rejected']} rejected, "
                  f"{len(summ['missing'])} missing")
    keys = [k for k in KEYS if k in m]
    if split == "sealed":  # target-side values are functions of the sealed truth alone: not shown
        keys = [k for k in keys if not k.startswith("target_")]
    for key in keys:
        mean, med, p90, mx = (released(split, key, *m[key][st]) for st in ("mean", "median", "p90", "max"))
        table.add_row(key, f"{mean[0]:.4f} [{mean[1]:.4f}, {mean[2]:.4f}]", f"{med[0]:.4f}", f"{p90[0]:.4f}",
                      f"{mx[0]:.4f}")
    out.print(table)
    if split == "sealed":
        out.print("sealed scores are released on the holdout grid (evals/holdout.py); exact values stay in the record")
    out.print(f"run record: {result.run_dir}")


def score_trajectories(s: Any, split: str, file: Path, meta: dict[str, Any], *, strict: bool, seed: int) -> None:
    """Score whole-continuation predictions of a trajectory suite and print the aggregates (``evals.trajectory_scoring``)."""
    from tasks import SuiteError

    from ..holdout import HoldoutError
    from ..scoring import ScoringError
    from ..trajectory_scoring import score_trajectory_file

    try:
        result = score_trajectory_file(s, split, file, predictor=meta, strict=strict, seed=seed)
    except SuiteError as e:
        fail(str(e))
    except (ScoringError, HoldoutError) as e:
        fail(str(e), code=1)
    for msg in result.errors[:20]:
        console.print(f"[yellow]rejected[/] {msg}", markup=True, highlight=False)
    summ = result.summary
    table = Table("questions", "metric", "estimate [95% CI]", title=f"{meta.get('label', meta['name'])} on "
                  f"{s.name}/{split}: {summ['n_scored']} of {summ['n_questions']} questions scored, "
                  f"{summ['n_rejected']} rejected")
    for group, m in summ["metrics"].items():
        for key in ("mean_abs_log10_error", "within_10x_share", "mean_log10_error", "calibration_slope"):
            if key in m:
                est, lo, hi = released(split, key, *m[key])  # sealed: on the holdout grid
                table.add_row(group, key, f"{est:.4f} [{lo:.4f}, {hi:.4f}]")
    out.print(table)
    out.print(f"run record: {result.run_dir}")


def score_step_round(s: Any, split: str, t: int, file: Path, meta: dict[str, Any], *, seed: int) -> None:
    """Score round ``t`` of the step-wise questions (``evals.stepwise.score_round_file``) and print its KL; exit 2 for
    a round out of order or a suite without samples, 1 for an incomplete round (nothing committed)."""
    from tasks import SuiteError

    from ..holdout import HoldoutError
    from ..rounds import RoundError
    from ..scoring import ScoringError
    from ..stepwise import score_round_file

    try:
        result = score_round_file(s, split, t, file, predictor=meta, seed=seed)
    except (SuiteError, RoundError) as e:
        fail(str(e))
    except (ScoringError, HoldoutError) as e:
        fail(str(e), code=1)
    summ, m = result.summary, result.summary["metrics"]
    est, lo, hi = released(split, "kl_nats", *m["kl_nats"]["mean"])
    out.print(f"round {t} of {summ['rounds']} ({meta.get('label', meta['name'])} on {s.name}/{split}, attempt "
              f"{summ['attempt']}): mean KL {est:.4f} nats [{lo:.4f}, {hi:.4f}] over {summ['n_scored']} sample steps")
    if "trajectory_kl" in m:
        est, lo, hi = released(split, "trajectory_kl", *m["trajectory_kl"]["total"])
        out.print(f"trajectory KL (sum over steps, mean over {summ['n_samples']} samples): {est:.4f} nats "
                  f"[{lo:.4f}, {hi:.4f}]")
    else:
        out.print(f"next: `logitpred suite questions {s.name} --split {split} --round {t + 1} --name "
                  f"{meta.get('label', meta['name'])}`")
    out.print(f"run record: {result.run_dir}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
