"""The predictability gap (issue 14 part 4): how much worse the same predictors do on found (shifted) prompts than on
ordinary held-out prompts.

For one predictor (or the gate's team) scored on an ordinary suite A and a shifted suite B, the gap of a per-prompt
metric is ``stat(B) - stat(A)`` (default: mean; for KL in nats, positive = worse on the found prompts). The two suites'
prompts are different prompts, so nothing pairs them prompt by prompt: the 95% CI is a percentile bootstrap that
resamples **each suite's prompts independently** (``scipy.stats.bootstrap`` with ``paired=False``, 2,000 resamples,
fixed seed), i.e. the uncertainty of both means. What is paired is the predictor: the same predictor (same label,
same options) or the same team rule on both suites.

- ``gap_ci``: the number and its CI from two arrays of per-prompt values;
- ``gap_table``: per predictor label with a run on both suites (latest run per label, ``evals.leaderboard``), the gap
  of KL and top-1 (and any other per-prompt column asked); sealed splits released on the holdout grid;
- ``gap_pairs``: which (ordinary, shifted) pairs a list of suites holds (a found suite's manifest names its ordinary
  suite, ``tasks.found``); ``to_markdown``: the table.

Trajectory suites (a found trajectory suite beside its ordinary trajectory suite): ``evals.gap_trajectory`` gives the
same table for whole-continuation metrics (per question) and the trajectory KL (per target sample), and
``gap_section`` stacks both kinds.

Left out: prompts paired by construction (a found prompt with an ordinary prompt it extends); a cluster bootstrap
over search sources; a gap between suites of different kinds (a next-token suite against a trajectory suite).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import holdout
from .stats import STATISTICS

METRICS = ("kl_nats", "top1")
COLUMNS = ["ordinary", "shifted", "split", "predictor", "metric", "n_ordinary", "n_shifted", "ordinary_mean",
           "ordinary_low", "ordinary_high", "shifted_mean", "shifted_low", "shifted_high", "gap", "gap_low",
           "gap_high", "ordinary_run", "shifted_run"]


def gap_ci(ordinary: np.ndarray, shifted: np.ndarray, *, statistic: str = "mean", seed: int = 0,
           n_resamples: int = 2000, confidence: float = 0.95) -> dict[str, Any]:
    """``{"gap", "low", "high", "ordinary": [est, low, high], "shifted": [...], "n_ordinary", "n_shifted",
    "pairing": "independent"}``: ``statistic(shifted) - statistic(ordinary)`` with a percentile bootstrap CI that
    resamples the two samples independently (module doc); each side's own CI is ``evals.stats.bootstrap_ci``.

    ``ordinary``, ``shifted``: per-prompt values, shapes ``(n_a,)`` and ``(n_b,)``, finite. Raises ``ValueError`` for
    an empty or non-finite array or an unknown statistic."""
    from .stats import bootstrap_ci

    a, b = np.asarray(ordinary, dtype=np.float64), np.asarray(shifted, dtype=np.float64)
    for name, x in (("ordinary", a), ("shifted", b)):
        if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
            raise ValueError(f"{name}: need a non-empty 1-d array of finite per-prompt values, got shape {x.shape}"
                             + ("" if x.size == 0 or np.isfinite(x).all() else " with non-finite values"))
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
    fn = STATISTICS[statistic]
    est = float(fn(b) - fn(a))
    if a.size < 2 or b.size < 2 or (np.all(a == a[0]) and np.all(b == b[0])):
        low = high = est
    else:
        res = stats.bootstrap((a, b), lambda x, y, axis=-1: fn(y, axis=axis) - fn(x, axis=axis), paired=False,
                              vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    side = {k: list(bootstrap_ci(x, statistic, confidence=confidence, n_resamples=n_resamples, seed=seed))
            for k, x in (("ordinary", a), ("shifted", b))}
    return {"gap": est, "low": low, "high": high, **side, "n_ordinary": int(a.size), "n_shifted": int(b.size),
            "statistic": statistic, "pairing": "independent"}


def released_gap(g: dict[str, Any], step: float | None) -> dict[str, Any]:
    """A gap on the holdout release grid (``evals.holdout``): estimates to the nearest step, bounds outward."""
    if step is None:
        return g
    out = dict(g)
    out["gap"], out["low"], out["high"] = holdout.release_interval(g["gap"], g["low"], g["high"], step)
    for k in ("ordinary", "shifted"):
        out[k] = list(holdout.release_interval(*g[k], step))
    return out


def gap_table(ordinary: str, shifted: str, split: str = "sealed", *, runs: list[dict[str, Any]] | None = None,
              root: Path | None = None, metrics: tuple[str, ...] = METRICS, seed: int = 0,
              release: bool | None = None) -> pd.DataFrame:
    """One row per (predictor label scored on both suites' ``split``, metric): each suite's mean with its CI and the
    gap with its independent-bootstrap CI (``gap_ci``). Latest run per label (``evals.leaderboard``). ``release``
    (default: True for sealed) puts the numbers on the holdout grid."""
    from .leaderboard import _latest, per_prompt
    from .records import read_runs

    runs = [r for r in (read_runs(root) if runs is None else runs) if "questions" not in r]
    a, b = _latest(runs, ordinary, split), _latest(runs, shifted, split)
    release = split == "sealed" if release is None else release
    rows = []
    for label in sorted(set(a) & set(b)):
        ta, tb = per_prompt(a[label]), per_prompt(b[label])
        for metric in metrics:
            g = gap_ci(ta[metric].to_numpy(), tb[metric].to_numpy(), seed=seed)
            if release:
                g = released_gap(g, holdout.step_for(metric))
            rows.append(gap_row(ordinary, shifted, split, label, metric, g, a[label]["run_id"], b[label]["run_id"]))
    return pd.DataFrame(rows, columns=COLUMNS)


def gap_row(ordinary: str, shifted: str, split: str, predictor: str, metric: str, g: dict[str, Any],
            ordinary_run: str, shifted_run: str) -> dict[str, Any]:
    """One row of the gap table (``COLUMNS``) from a ``gap_ci`` (or ``released_gap``) result."""
    return {"ordinary": ordinary, "shifted": shifted, "split": split, "predictor": predictor, "metric": metric,
            "n_ordinary": g["n_ordinary"], "n_shifted": g["n_shifted"], "ordinary_mean": g["ordinary"][0],
            "ordinary_low": g["ordinary"][1], "ordinary_high": g["ordinary"][2], "shifted_mean": g["shifted"][0],
            "shifted_low": g["shifted"][1], "shifted_high": g["shifted"][2], "gap": g["gap"], "gap_low": g["low"],
            "gap_high": g["high"], "ordinary_run": ordinary_run, "shifted_run": shifted_run}


def gap_pairs(suites: list[str]) -> list[tuple[str, str]]:
    """(ordinary, shifted) for every built suite of ``suites`` whose manifest says ``role: shifted`` and names an
    ordinary suite that is also in ``suites``."""
    from tasks import SuiteError, load_suite

    pairs = []
    for name in suites:
        try:
            m = load_suite(name).manifest
        except SuiteError:
            continue
        ordinary = (m.get("found") or {}).get("ordinary")
        if m.get("role") == "shifted" and ordinary in suites:
            pairs.append((ordinary, name))
    return pairs


def to_markdown(df: pd.DataFrame) -> str:
    """The gap table in Markdown: per predictor and metric, ordinary and shifted means [95% CI] and the gap."""
    if df.empty:
        return ""

    def f(x: float) -> str:  # no "-0.000" for a tiny negative
        return f"{round(x, 3) + 0.0:.3f}"

    lines = ["## Predictability gap: found (shifted) vs ordinary prompts", "",
             "gap = mean on the shifted suite - mean on the ordinary suite, same predictor; 95% CI from resampling "
             "each suite's prompts independently (the prompts are not paired). Trajectory suites: whole-continuation "
             "metrics per question (mean_abs_log10_error in orders of magnitude, within_10x_share), trajectory_kl "
             "(nats) per target sample; n counts those.", "",
             "| ordinary | shifted | split | predictor | metric | n (ord / shifted) | ordinary [95% CI] | "
             "shifted [95% CI] | gap [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.ordinary} | {r.shifted} | {r.split} | {r.predictor} | {r.metric} | {r.n_ordinary} / "
                     f"{r.n_shifted} | {f(r.ordinary_mean)} [{f(r.ordinary_low)}, {f(r.ordinary_high)}] | "
                     f"{f(r.shifted_mean)} [{f(r.shifted_low)}, {f(r.shifted_high)}] | {f(r.gap)} "
                     f"[{f(r.gap_low)}, {f(r.gap_high)}] |")
    return "\n".join(lines) + "\n"


def gap_section(suites: list[str], split: str, *, root: Path | None = None, seed: int = 0) -> str:
    """For the leaderboard: the gap table of every (ordinary, shifted) pair among ``suites`` (``gap_pairs``) on
    ``split`` (next-token metrics, or trajectory metrics for a pair of trajectory suites), written as ``results/leaderboards/gap-<split>.csv``; returns its Markdown ("" when there is none)."""
    from tasks.io import atomic_write_text
    from tasks.paths import results_dir

    from .gap_trajectory import gap_table as trajectory_gap_table
    from .records import read_runs

    runs = read_runs(root)  # a pair's rows are of one kind: the other table of it is empty
    parts = [t(o, s, split, runs=runs, seed=seed) for o, s in gap_pairs(suites)
             for t in (gap_table, trajectory_gap_table)]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return ""
    df = pd.concat(parts, ignore_index=True)
    out = (root or results_dir()) / "leaderboards"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"gap-{split}.csv", df.to_csv(index=False))
    return to_markdown(df)
