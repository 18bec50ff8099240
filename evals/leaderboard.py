"""Leaderboards across suites and predictors, from the run records: pandas DataFrames, Markdown, CSV and one
self-contained HTML page with plots.

One row per (suite, split, predictor): the latest run of each predictor label counts, ranked by mean KL (lower is
better). Every aggregate is the run record's 95% percentile bootstrap CI over prompts (``evals.stats``). Neighbours in
the ranking are compared on the prompts both scored (paired): the mean KL difference with a paired bootstrap CI (the
bootstrap of the mean per-prompt difference) and the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``).
Uniform and unigram baselines sit beside everything else (``make run`` scores them).

Trajectory suites (``evals.leaderboard_trajectory``) get rows of their own kind (``questions``: ``trajectory``; the
next-token rows say ``next-token``): mean absolute log10 error of whole continuations and share within 10x, and the
trajectory KL along the target's samples, each with its CI, ranked by the log10 error; the paired comparison is on the
questions both answered.

Sealed splits are released coarsely (``evals.holdout``): estimates on the release grid, CI bounds rounded outward,
the standing ``kl_ladder`` is Blum & Hardt's Ladder over the predictor's sealed runs in time order, p-values rounded
up to two decimals. ``leaderboard(..., release=False)`` gives the exact numbers to harness-side code.

From Python: ``leaderboard("wiki")`` (one suite), ``leaderboards()`` (all suites, long format), ``per_prompt(run)``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from tasks.io import atomic_write_text
from tasks.paths import results_dir

from . import holdout
from . import leaderboard_trajectory as traj
from .records import read_runs
from .stats import bootstrap_ci

COLUMNS = ["suite", "split", "predictor", "n", "kl_mean", "kl_ci_low", "kl_ci_high", "kl_median", "kl_p90", "top1",
           "top1_ci_low", "top1_ci_high", "ce_realized", "target_ce_realized", "js_bits", "delta_next",
           "delta_ci_low", "delta_ci_high", "n_paired", "p_wilcoxon", "kl_ladder", "approved", "run_id", *traj.COLUMNS]
RELEASE_COLUMNS = {"kl_mean": ("kl_nats", "nearest"), "kl_ci_low": ("kl_nats", "down"),
                   "kl_ci_high": ("kl_nats", "up"), "kl_median": ("kl_nats", "nearest"),
                   "kl_p90": ("kl_nats", "nearest"), "top1": ("top1", "nearest"), "top1_ci_low": ("top1", "down"),
                   "top1_ci_high": ("top1", "up"), "ce_realized": ("ce_realized_nats", "nearest"),
                   "target_ce_realized": ("ce_realized_nats", "nearest"), "js_bits": ("js_bits", "nearest"),
                   "delta_next": ("kl_nats", "nearest"), "delta_ci_low": ("kl_nats", "down"),
                   "delta_ci_high": ("kl_nats", "up"), "mal10_ladder": ("mean_abs_log10_error", "nearest"),
                   **traj.RELEASE}

SEALED_NOTE = ("numbers released on the holdout grid (KL step 0.05 nats, rates 0.01; CI bounds rounded outward; "
               "p-values rounded up to 0.01), so repeated submissions cannot mine the sealed truth.")


def _label(run: dict[str, Any]) -> str:
    return run["predictor"].get("label") or run["predictor"]["name"]


def per_prompt(run: dict[str, Any]) -> pd.DataFrame:
    """The per-prompt metrics table of a run record (``read_runs`` adds the folder as ``_dir``)."""
    return pd.read_csv(Path(run["_dir"]) / "per_prompt.csv")


def paired(a: pd.DataFrame, b: pd.DataFrame, *, metric: str = "kl_nats", seed: int = 0,
           on: list[str] | None = None) -> dict[str, float]:
    """Paired comparison on the prompts (or ``on`` keys, e.g. questions) both tables scored: mean of b - a with a
    bootstrap CI, and Wilcoxon's p."""
    on = on or ["prompt_id"]
    m = a[[*on, metric]].merge(b[[*on, metric]], on=on, suffixes=("_a", "_b"))
    d = (m[f"{metric}_b"] - m[f"{metric}_a"]).to_numpy(np.float64)
    if d.size == 0:
        return {"delta": np.nan, "low": np.nan, "high": np.nan, "n": 0, "p": np.nan}
    est, low, high = bootstrap_ci(d, seed=seed)
    # all-zero differences: Wilcoxon is undefined (no non-zero ranks); the two are indistinguishable
    p = 1.0 if not np.any(d) else float(stats.wilcoxon(d).pvalue)
    return {"delta": est, "low": low, "high": high, "n": int(d.size), "p": p}


def _latest(runs: list[dict[str, Any]], suite: str, split: str) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:  # oldest first, so the last one wins
        if run["suite"]["name"] == suite and run["split"] == split:
            latest[_label(run)] = run
    return latest


def holdout_key(run: dict[str, Any]) -> str | None:
    """What identifies a run's sealed holdout: the sealed prompts' hash (it survives a recomputation of truth, whose
    last float bits may change the commitment); runs recorded before it existed fall back to the commitment."""
    return run["suite"].get("sealed_prompts_sha256") or run["suite"].get("commitment")


def _ladder(runs: list[dict[str, Any]], suite: str, label: str, key: str | None) -> float:
    history = [r["metrics"]["kl_nats"]["mean"][0] for r in runs if r["suite"]["name"] == suite and
               r["split"] == "sealed" and _label(r) == label and holdout_key(r) == key]
    return holdout.ladder(history, holdout.step_for("kl_nats"))[-1] if history else np.nan


def leaderboard(suite: str, split: str = "sealed", *, root: Path | None = None, release: bool | None = None,
                runs: list[dict[str, Any]] | None = None, seed: int = 0) -> pd.DataFrame:
    """DataFrame of the latest run per predictor on ``suite``/``split``, best (lowest mean KL) first; a trajectory
    suite's rows (``questions == "trajectory"``) follow, best (lowest mean absolute log10 error) first.

    ``release`` (default: True for sealed) puts sealed numbers on the holdout grid; ``runs`` reuses loaded records.
    """
    every = read_runs(root) if runs is None else runs
    runs = [r for r in every if "questions" not in r]  # next-token runs (trajectory runs: leaderboard_trajectory)
    latest = _latest(runs, suite, split)
    rows = []
    for label, run in latest.items():
        m = run["metrics"]
        rows.append({
            "suite": suite, "split": split, "predictor": label, "n": run["n_scored"],
            "kl_mean": m["kl_nats"]["mean"][0], "kl_ci_low": m["kl_nats"]["mean"][1],
            "kl_ci_high": m["kl_nats"]["mean"][2], "kl_median": m["kl_nats"]["median"][0],
            "kl_p90": m["kl_nats"]["p90"][0], "top1": m["top1"]["mean"][0], "top1_ci_low": m["top1"]["mean"][1],
            "top1_ci_high": m["top1"]["mean"][2], "ce_realized": m["ce_realized_nats"]["mean"][0],
            "target_ce_realized": m["target_ce_realized_nats"]["mean"][0], "js_bits": m["js_bits"]["mean"][0],
            "kl_ladder": _ladder(runs, suite, label, holdout_key(run)) if split == "sealed" else np.nan,
            "approved": run["predictor"].get("approved", True), "run_id": run["run_id"], "questions": "next-token",
        })
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(["kl_mean", "predictor"], kind="stable")
    df = df.reset_index(drop=True)
    tables = {r.predictor: per_prompt(latest[r.predictor]) for r in df.itertuples()}
    for i in range(len(df) - 1):  # row i against the next-ranked row i+1: positive delta = row i better
        c = paired(tables[df.at[i, "predictor"]], tables[df.at[i + 1, "predictor"]], seed=seed)
        df.loc[i, ["delta_next", "delta_ci_low", "delta_ci_high", "n_paired", "p_wilcoxon"]] = [
            c["delta"], c["low"], c["high"], c["n"], c["p"]]
    more = traj.rows(every, suite, split, seed=seed)
    if not more.empty:
        df = more if df.empty else pd.concat([df, more], ignore_index=True)
    if release if release is not None else split == "sealed":
        df = released(df)
    return df


def released(df: pd.DataFrame, steps: dict[str, float] | None = None) -> pd.DataFrame:
    """The sealed release of a leaderboard: every number on its metric's grid, bounds outward, p rounded up to 0.01."""
    out = df.copy()
    for col, (metric, direction) in RELEASE_COLUMNS.items():
        step = holdout.step_for(metric, steps)
        out[col] = [holdout.coarse(v, step, direction) if pd.notna(v) else v for v in out[col]]
    out["p_wilcoxon"] = [max(0.01, holdout.coarse(v, 0.01, "up")) if pd.notna(v) else v for v in out["p_wilcoxon"]]
    return out


def leaderboards(suites: list[str] | None = None, split: str = "sealed", *, root: Path | None = None,
                 release: bool | None = None) -> pd.DataFrame:
    """All suites (or the named ones) stacked: the long table behind the cross-suite views."""
    runs = read_runs(root)
    names = suites or sorted({r["suite"]["name"] for r in runs if r["split"] == split})
    parts = [leaderboard(s, split, runs=runs, release=release) for s in names]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _p(v: Any) -> str:
    return "-" if pd.isna(v) else ("<0.001" if v < 1e-3 else f"{v:.3g}")


def to_markdown(df: pd.DataFrame, *, title: str = "") -> str:
    """A readable Markdown table: KL in nats with its 95% CI, the paired comparison with the next row, top-1 in %."""
    lines = [f"### {title}", ""] if title else []
    trajectory = df[df["questions"] == "trajectory"].reset_index(drop=True)
    df = df[df["questions"] != "trajectory"]
    if not trajectory.empty:
        lines += ["Trajectory suite: whole continuations (mean absolute log10 error, orders of magnitude; lower is "
                  "better) and trajectory KL along the target's samples (nats).", "", *traj.to_markdown(trajectory)]
        if not df.empty:
            lines.append("")
    if df.empty:
        if len(trajectory) and trajectory["split"].iloc[0] == "sealed":
            lines += ["", f"Sealed split: {SEALED_NOTE}"]
        return "\n".join(lines) + "\n"
    lines += ["| # | predictor | n | mean KL (nats) [95% CI] | vs next: ΔKL [95% CI], Wilcoxon p | median KL | "
              "top-1 | CE realized | target CE |", "|---|---|---|---|---|---|---|---|---|"]
    for i, r in df.reset_index(drop=True).iterrows():
        flag = "" if r["approved"] else " (unapproved)"
        vs = "-" if pd.isna(r["delta_next"]) else (f"{_fmt(r['delta_next'])} [{_fmt(r['delta_ci_low'])}, "
                                                  f"{_fmt(r['delta_ci_high'])}], p={_p(r['p_wilcoxon'])}")
        lines.append(f"| {i + 1} | {r['predictor']}{flag} | {r['n']} | {_fmt(r['kl_mean'])} [{_fmt(r['kl_ci_low'])}, "
                     f"{_fmt(r['kl_ci_high'])}] | {vs} | {_fmt(r['kl_median'])} | {100 * r['top1']:.1f}% | "
                     f"{_fmt(r['ce_realized'])} | {_fmt(r['target_ce_realized'])} |")
    if len(df) and df["split"].iloc[0] == "sealed":
        lines += ["", f"Sealed split: {SEALED_NOTE}"]
    return "\n".join(lines) + "\n"


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Predictors x next-token suites: ``mean [low, high]`` of KL strings, for the cross-suite summary."""
    df = df[df["questions"] != "trajectory"]
    cell = df.assign(cell=[f"{_fmt(a)} [{_fmt(b)}, {_fmt(c)}]" for a, b, c in
                           zip(df["kl_mean"], df["kl_ci_low"], df["kl_ci_high"], strict=True)])
    return cell.pivot(index="predictor", columns="suite", values="cell").fillna("-")


def write(df: pd.DataFrame, suite: str, split: str, *, root: Path | None = None) -> tuple[Path, Path]:
    """One suite's table as ``results/leaderboards/<suite>-<split>.{md,csv}``."""
    out = (root or results_dir()) / "leaderboards"
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{suite}-{split}.md", out / f"{suite}-{split}.csv"
    atomic_write_text(md, to_markdown(df, title=f"Leaderboard: {suite} ({split})"))
    atomic_write_text(csv, df.to_csv(index=False))
    return md, csv


def write_all(df: pd.DataFrame, split: str, *, root: Path | None = None, plots: bool = True) -> dict[str, Path]:
    """Every suite's Markdown/CSV, the long CSV, a combined Markdown and ``index-<split>.html`` with plots."""
    out = (root or results_dir()) / "leaderboards"
    paths: dict[str, Path] = {}
    for suite, part in df.groupby("suite", sort=False):
        write(part.reset_index(drop=True), str(suite), split, root=root)
    paths["csv"] = out / f"all-{split}.csv"
    atomic_write_text(paths["csv"], df.to_csv(index=False))
    paths["md"] = out / f"all-{split}.md"
    piv = pivot(df)
    summary = "\n".join(["| predictor | " + " | ".join(map(str, piv.columns)) + " |",
                         "|---" * (len(piv.columns) + 1) + "|",
                         *(f"| {i} | " + " | ".join(r) + " |" for i, r in zip(piv.index, piv.values.tolist(), strict=True))])
    tsum = ""
    if (df["questions"] == "trajectory").any():
        tp = traj.pivot(df[df["questions"] == "trajectory"])
        tsum = "\n".join([f"## Trajectory suites ({split}; mean |log10 error| and trajectory KL, 95% CI)", "",
                          "| predictor | " + " | ".join(map(str, tp.columns)) + " |", "|---" * (len(tp.columns) + 1)
                          + "|", *(f"| {i} | " + " | ".join(r) + " |" for i, r in
                                   zip(tp.index, tp.values.tolist(), strict=True)), "", ""])
    from .gap import gap_section  # found suites beside their ordinary suite: the predictability gap

    gap = gap_section(list(df["suite"].unique()), split, root=root)
    tsum += f"{gap}\n" if gap else ""
    atomic_write_text(paths["md"], f"## Mean KL by suite ({split}; nats, 95% CI)\n\n{summary}\n\n{tsum}" + "\n".join(
        to_markdown(p.reset_index(drop=True), title=f"{s} ({split})") for s, p in df.groupby("suite", sort=False)))
    paths["html"] = out / f"index-{split}.html"
    atomic_write_text(paths["html"], to_html(df, split, plots=plots, root=root))
    return paths


def to_html(df: pd.DataFrame, split: str, *, plots: bool = True, root: Path | None = None) -> str:
    """A self-contained page: cross-suite summary, bar chart, then per suite the table and its three plots."""
    from . import plots as P
    from .report import html_page

    body = [f"<h1>logitpred leaderboard ({html.escape(split)} split)</h1>",
            "<p>Mean KL(target || prediction) in nats, lower is better; 95% percentile bootstrap CIs over prompts; "
            "each row is compared with the next on the prompts both scored (paired bootstrap CI of the mean "
            "difference, Wilcoxon signed-rank p).</p>",
            "<h2>By suite</h2>", pivot(df).rename_axis(index=None, columns=None).to_html(classes="board")]
    if split == "sealed":
        body.insert(2, f"<p><b>Sealed split:</b> {html.escape(SEALED_NOTE)}</p>")
    nt = df[df["questions"] != "trajectory"]
    if (df["questions"] == "trajectory").any():
        body += ["<h2>Trajectory suites</h2>", "<p>Mean absolute log10 error of whole continuations (orders of "
                 "magnitude) and trajectory KL along the target's samples (nats), 95% CIs; lower is better.</p>",
                 traj.pivot(df[df["questions"] == "trajectory"]).rename_axis(index=None, columns=None).to_html(
                     classes="board")]
    if plots and len(nt):
        body.append(f'<img alt="mean KL per suite" src="{P.data_uri(P.png_bytes(P.suite_bars(nt)))}">')
    runs = {r["run_id"]: r for r in read_runs(root)} if plots else {}
    for suite, part in df.groupby("suite", sort=False):
        part = part.reset_index(drop=True)
        body.append(f"<h2>{html.escape(str(suite))}</h2>")
        if (part["questions"] == "trajectory").any():
            body.append(traj.to_html(part[part["questions"] == "trajectory"]))
        part = part[part["questions"] != "trajectory"]
        if part.empty:
            continue  # trajectory suites: tables only (their calibration plots are in each run's record)
        body.append(_markdown_table_html(part))
        if plots and runs:
            tables = {r.predictor: per_prompt(runs[r.run_id]) for r in part.itertuples() if r.run_id in runs}
            for fn in (P.kl_distribution, P.kl_vs_context, P.calibration):
                fig = fn(tables, title=f"{fn.__name__.replace('_', ' ')}: {suite} ({split})")
                body.append(f'<img alt="{fn.__name__}" src="{P.data_uri(P.png_bytes(fig))}">')
    return html_page(f"logitpred leaderboard ({split})", "\n".join(body))


def _markdown_table_html(df: pd.DataFrame) -> str:
    show = pd.DataFrame({
        "predictor": [p + ("" if a else " (unapproved)") for p, a in zip(df["predictor"], df["approved"], strict=True)],
        "n": df["n"],
        "mean KL [95% CI]": [f"{_fmt(a)} [{_fmt(b)}, {_fmt(c)}]" for a, b, c in
                             zip(df["kl_mean"], df["kl_ci_low"], df["kl_ci_high"], strict=True)],
        "vs next: ΔKL [95% CI]": ["-" if pd.isna(d) else f"{_fmt(d)} [{_fmt(lo)}, {_fmt(hi)}]" for d, lo, hi in
                                  zip(df["delta_next"], df["delta_ci_low"], df["delta_ci_high"], strict=True)],
        "Wilcoxon p": [_p(v) for v in df["p_wilcoxon"]],
        "top-1": [f"{100 * v:.1f}%" for v in df["top1"]],
        "CE realized": [_fmt(v) for v in df["ce_realized"]],
        "run": df["run_id"],
    })
    show.index = range(1, len(show) + 1)
    return show.to_html(classes="board")
