"""Leaderboard rows of trajectory suites: whole-continuation errors and the trajectory KL beside next-token KL.

A trajectory suite asks no plain next-token question; its runs are whole-continuation scorings
(``evals.trajectory_scoring``, ``summary["questions"] == "trajectory"``) and step-wise attempts along the target's
samples (``evals.stepwise``, ``"trajectory-steps"``; the trajectory KL is in the run of the last round, or of a whole
in-process attempt). One row per predictor label: its latest whole-continuation run (mean absolute log10 error and the
share within 10x, each with its 95% bootstrap CI over questions) and its latest complete step-wise attempt (trajectory
KL in nats: mean over samples of the summed per-step KL, with its CI). Rows are ranked by mean absolute log10 error
(labels without a whole-continuation run last, by trajectory KL); each is compared with the next on the questions
both answered (paired bootstrap CI of the mean difference of absolute log10 errors, Wilcoxon p). On sealed splits
``evals.leaderboard.released`` puts every number on the holdout grid, and ``mal10_ladder`` is Blum & Hardt's Ladder
over the label's sealed whole-continuation runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import holdout

WHOLE, STEPS = "trajectory", "trajectory-steps"  # ``summary["questions"]`` of the two kinds of trajectory run
KEY = ["prompt_id", "continuation_id"]
COLUMNS = ["questions", "n_samples", "mal10_mean", "mal10_ci_low", "mal10_ci_high", "within10x", "within10x_ci_low",
           "within10x_ci_high", "tkl_mean", "tkl_ci_low", "tkl_ci_high", "mal10_ladder", "steps_run_id"]
RELEASE = {"mal10_mean": ("mean_abs_log10_error", "nearest"), "mal10_ci_low": ("mean_abs_log10_error", "down"),
           "mal10_ci_high": ("mean_abs_log10_error", "up"), "within10x": ("within_10x_share", "nearest"),
           "within10x_ci_low": ("within_10x_share", "down"), "within10x_ci_high": ("within_10x_share", "up"),
           "tkl_mean": ("trajectory_kl", "nearest"), "tkl_ci_low": ("trajectory_kl", "down"),
           "tkl_ci_high": ("trajectory_kl", "up")}


def is_trajectory_run(run: dict[str, Any]) -> bool:
    return run.get("questions") in (WHOLE, STEPS)


def _latest(runs: list[dict[str, Any]], suite: str, split: str, kind: str) -> dict[str, dict[str, Any]]:
    from .leaderboard import _label

    latest: dict[str, dict[str, Any]] = {}
    for run in runs:  # oldest first, so the last one wins
        if run.get("questions") == kind and run["suite"]["name"] == suite and run["split"] == split and (
                kind == WHOLE or "trajectory_kl" in run.get("metrics", {})):
            latest[_label(run)] = run
    return latest


def _ladder(runs: list[dict[str, Any]], suite: str, label: str, key: str | None) -> float:
    from .leaderboard import _label, holdout_key

    history = [r["metrics"]["all"]["mean_abs_log10_error"][0] for r in runs if r.get("questions") == WHOLE
               and r["suite"]["name"] == suite and r["split"] == "sealed" and _label(r) == label
               and holdout_key(r) == key]
    return holdout.ladder(history, holdout.step_for("mean_abs_log10_error"))[-1] if history else np.nan


def rows(runs: list[dict[str, Any]], suite: str, split: str, *, seed: int = 0) -> pd.DataFrame:
    """The trajectory rows of ``suite``/``split`` (module doc) in ``evals.leaderboard.COLUMNS``, exact values, ranked,
    with the paired comparison of neighbours; empty when the suite has no trajectory run on the split."""
    from .leaderboard import COLUMNS as ALL
    from .leaderboard import paired, per_prompt

    whole, steps = _latest(runs, suite, split, WHOLE), _latest(runs, suite, split, STEPS)
    out = []
    for label in sorted(set(whole) | set(steps)):
        w, s = whole.get(label), steps.get(label)
        row: dict[str, Any] = {"suite": suite, "split": split, "predictor": label, "questions": "trajectory",
                               "approved": (w or s)["predictor"].get("approved", True)}
        if w is not None:
            m = w["metrics"]["all"]
            row.update(n=w["n_scored"], run_id=w["run_id"], **dict(zip(
                ["mal10_mean", "mal10_ci_low", "mal10_ci_high"], m["mean_abs_log10_error"], strict=True)), **dict(zip(
                    ["within10x", "within10x_ci_low", "within10x_ci_high"], m["within_10x_share"], strict=True)))
            if split == "sealed":
                from .leaderboard import holdout_key

                row["mal10_ladder"] = _ladder(runs, suite, label, holdout_key(w))
        if s is not None:
            row.update(dict(zip(["tkl_mean", "tkl_ci_low", "tkl_ci_high"], s["metrics"]["trajectory_kl"]["total"],
                                strict=True)), n_samples=s.get("n_samples"), steps_run_id=s["run_id"])
            row.setdefault("run_id", s["run_id"])
            row.setdefault("n", s.get("n_samples"))
        out.append(row)
    df = pd.DataFrame(out, columns=ALL)
    if df.empty:
        return df
    df = df.sort_values(["mal10_mean", "tkl_mean", "predictor"], kind="stable", na_position="last")
    df = df.reset_index(drop=True)
    for i in range(len(df) - 1):  # row i against row i+1 on the questions both answered: positive = row i better
        a, b = whole.get(df.at[i, "predictor"]), whole.get(df.at[i + 1, "predictor"])
        if a is None or b is None:
            continue
        c = paired(per_prompt(a), per_prompt(b), metric="abs_error_log10", on=KEY, seed=seed)
        df.loc[i, ["delta_next", "delta_ci_low", "delta_ci_high", "n_paired", "p_wilcoxon"]] = [
            c["delta"], c["low"], c["high"], c["n"], c["p"]]
    return df


def _fmt(a: Any, b: Any, c: Any) -> str:
    from .leaderboard import _fmt as f

    return "-" if pd.isna(a) else f"{f(a)} [{f(b)}, {f(c)}]"


def cells(r: Any) -> dict[str, str]:
    """A trajectory row's shown cells (Markdown, HTML and the CLI share them)."""
    from .leaderboard import _p

    vs = "-" if pd.isna(r["delta_next"]) else (f"{_fmt(r['delta_next'], r['delta_ci_low'], r['delta_ci_high'])}, "
                                               f"p={_p(r['p_wilcoxon'])}")
    return {"predictor": r["predictor"] + ("" if r["approved"] else " (unapproved)"),
            "questions": "-" if pd.isna(r["mal10_mean"]) else str(int(r["n"])),
            "mean |log10 error| [95% CI]": _fmt(r["mal10_mean"], r["mal10_ci_low"], r["mal10_ci_high"]),
            "vs next: Δ|log10 error| [95% CI], Wilcoxon p": vs,
            "within 10x [95% CI]": _fmt(r["within10x"], r["within10x_ci_low"], r["within10x_ci_high"]),
            "samples": "-" if pd.isna(r["n_samples"]) else str(int(r["n_samples"])),
            "trajectory KL nats [95% CI]": _fmt(r["tkl_mean"], r["tkl_ci_low"], r["tkl_ci_high"])}


def to_markdown(df: pd.DataFrame) -> list[str]:
    """The Markdown table lines of trajectory rows."""
    if df.empty:
        return []
    shown = [cells(r) for _, r in df.iterrows()]
    head = ["#", *shown[0]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += [f"| {i} | " + " | ".join(c.values()) + " |" for i, c in enumerate(shown, 1)]
    return lines


def to_html(df: pd.DataFrame) -> str:
    show = pd.DataFrame([cells(r) for _, r in df.iterrows()])
    show["run"] = list(df["run_id"])
    show.index = range(1, len(show) + 1)
    return show.to_html(classes="board")


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Predictors x trajectory suites: ``|log10 err| m [lo, hi]; KL m [lo, hi]`` strings."""
    cell = df.assign(cell=[f"|log10 err| {_fmt(a, b, c)}; traj. KL {_fmt(d, e, f)}" for a, b, c, d, e, f in zip(
        df["mal10_mean"], df["mal10_ci_low"], df["mal10_ci_high"], df["tkl_mean"], df["tkl_ci_low"],
        df["tkl_ci_high"], strict=True)])
    return cell.pivot(index="predictor", columns="suite", values="cell").fillna("-")
