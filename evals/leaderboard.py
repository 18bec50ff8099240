"""Leaderboards: one row per predictor for a suite split, from the run records, sorted by mean KL (lower is better).

The latest run of each predictor counts. Uniform and unigram baselines appear beside everything else (``make run``
scores them), so every number can be read against the trivial floor.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.paths import results_dir

from .records import read_runs

COLUMNS = ["predictor", "n", "kl_mean", "kl_ci_low", "kl_ci_high", "kl_median", "kl_p90", "top1", "ce_realized",
           "target_ce_realized", "js_bits", "approved", "run_id"]


def leaderboard(suite: str, split: str = "sealed", *, root: Path | None = None) -> pd.DataFrame:
    """DataFrame of the latest run per predictor on ``suite``/``split``, best (lowest mean KL) first."""
    latest: dict[str, dict] = {}
    for run in read_runs(root):
        if run["suite"]["name"] == suite and run["split"] == split:
            latest[run["predictor"].get("label") or run["predictor"]["name"]] = run
    rows = []
    for label, run in latest.items():
        m = run["metrics"]
        rows.append({
            "predictor": label, "n": run["n_scored"],
            "kl_mean": m["kl_nats"]["mean"][0], "kl_ci_low": m["kl_nats"]["mean"][1],
            "kl_ci_high": m["kl_nats"]["mean"][2], "kl_median": m["kl_nats"]["median"][0],
            "kl_p90": m["kl_nats"]["p90"][0], "top1": m["top1"]["mean"][0],
            "ce_realized": m["ce_realized_nats"]["mean"][0],
            "target_ce_realized": m["target_ce_realized_nats"]["mean"][0], "js_bits": m["js_bits"]["mean"][0],
            "approved": run["predictor"].get("approved", True), "run_id": run["run_id"],
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values("kl_mean", kind="stable").reset_index(drop=True)


def to_markdown(df: pd.DataFrame, *, title: str = "") -> str:
    """A readable Markdown table: KL in nats with its 95% CI, top-1 in percent, cross-entropies in nats."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| # | predictor | n | mean KL (nats) [95% CI] | median KL | top-1 | CE realized | target CE |",
              "|---|---|---|---|---|---|---|---|"]
    for i, r in df.iterrows():
        flag = "" if r["approved"] else " (unapproved)"
        lines.append(f"| {i + 1} | {r['predictor']}{flag} | {r['n']} | {r['kl_mean']:.3f} [{r['kl_ci_low']:.3f}, "
                     f"{r['kl_ci_high']:.3f}] | {r['kl_median']:.3f} | {100 * r['top1']:.1f}% | "
                     f"{r['ce_realized']:.3f} | {r['target_ce_realized']:.3f} |")
    return "\n".join(lines) + "\n"


def write(df: pd.DataFrame, suite: str, split: str, *, root: Path | None = None) -> tuple[Path, Path]:
    out = (root or results_dir()) / "leaderboards"
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{suite}-{split}.md", out / f"{suite}-{split}.csv"
    md.write_text(to_markdown(df, title=f"Leaderboard: {suite} ({split})"))
    df.to_csv(csv, index=False)
    return md, csv
