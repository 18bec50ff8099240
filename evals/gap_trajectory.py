"""The predictability gap of trajectory metrics: how much worse the same predictors predict whole continuations (and
the target's next-token distributions along its own samples) after found prompts than after ordinary ones.

A found trajectory suite (``logitpred suite build NAME --from-search RUN --continuation M``, ``tasks.found``) names
its ordinary suite in its manifest like a next-token found suite; the gap compares the two suites' run records,
per predictor label (or the gate's team), exactly as ``evals.gap`` does for next-token metrics: ``stat(shifted) -
stat(ordinary)`` with the 95% percentile bootstrap CI that resamples each suite's questions **independently**
(``evals.gap.gap_ci``: ``scipy.stats.bootstrap(paired=False)``, 2,000 resamples, fixed seed). Per-question values
are read from the run records the trajectory leaderboard reads (``evals.leaderboard_trajectory``); nothing is scored
again:

- whole-continuation metrics (``WHOLE``), one value per question of the latest ``questions: trajectory`` run of the
  label: ``mean_abs_log10_error`` (``abs_error_log10``, orders of magnitude), ``within_10x_share``
  (``abs_error_log10 <= 1``), ``mean_log10_error`` (``error_log10``), ``mean_abs_nats_per_token``;
- ``trajectory_kl`` (nats), one value per target sample of the latest complete step-wise attempt
  (``questions: trajectory-steps``): the sum over the sample's steps of the per-step KL, the Monte Carlo estimate of
  the sequence KL whose mean is the run's ``metrics["trajectory_kl"]["total"]`` (``evals.trajectory_metrics``;
  ``sample_kl`` checks that it is). Only when both suites were built with samples.

Sealed numbers are released on the holdout grid of the metric (``evals.holdout``: 0.05 orders of magnitude, 0.05
nats, 0.01 for the share), bounds outward, as on the trajectory leaderboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import holdout
from .gap import COLUMNS, gap_ci, gap_row, released_gap
from .leaderboard_trajectory import STEPS, WHOLE

STEP_METRIC = "trajectory_kl"
WHOLE_METRICS = ("mean_abs_log10_error", "within_10x_share", "mean_log10_error", "mean_abs_nats_per_token")
METRICS = ("mean_abs_log10_error", "within_10x_share", STEP_METRIC)  # the leaderboard's gap rows


def question_values(per: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-question values ``(n_questions,)`` float64 of a whole-continuation metric from a trajectory run's
    ``per_prompt.csv`` (module doc). Raises ``ValueError`` for a metric that is not one of ``WHOLE_METRICS``."""
    if metric == "within_10x_share":
        return (per["abs_error_log10"].to_numpy(np.float64) <= 1.0).astype(np.float64)
    column = {"mean_abs_log10_error": "abs_error_log10", "mean_log10_error": "error_log10",
              "mean_abs_nats_per_token": "abs_error_nats_per_token"}.get(metric)
    if column is None:
        raise ValueError(f"{metric!r} is not a whole-continuation metric; use one of {', '.join(WHOLE_METRICS)}")
    return per[column].to_numpy(np.float64)


def _round_runs(run: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run records of every round of ``run``'s step-wise attempt (rounds scored one file at a time)."""
    from .leaderboard import _label

    same = {}
    for r in runs:
        if r.get("questions") == STEPS and r["suite"]["name"] == run["suite"]["name"] and r["split"] == run["split"] \
                and _label(r) == _label(run) and r.get("attempt") == run.get("attempt") and isinstance(
                    r.get("round"), int) and r["suite"].get("trajectory_commitment") == run["suite"].get(
                    "trajectory_commitment"):
            same[r["round"]] = r
    missing = [t for t in range(1, int(run["rounds"]) + 1) if t not in same]
    if missing:
        raise ValueError(f"step-wise attempt {run.get('attempt')} of {_label(run)!r} on {run['suite']['name']}/"
                         f"{run['split']}: the run records of round(s) {missing} are not under results/")
    return [same[t] for t in range(1, int(run["rounds"]) + 1)]


def sample_kl(run: dict[str, Any], runs: list[dict[str, Any]] | None = None) -> pd.Series:
    """Per-sample trajectory KL (nats), indexed by the sample's continuation id, of a complete step-wise attempt.

    ``run``: a step-wise run record holding ``metrics["trajectory_kl"]`` (``read_runs``' dicts, with ``_dir``): an
    in-process attempt (``round: all``, one ``per_prompt.csv`` row per (sample, step)) or the last round of an
    attempt scored round by round (then the other rounds' records are looked up in ``runs``). The value of a sample is
    the sum of ``kl_nats`` over its steps (``evals.stepwise``). Raises ``ValueError`` when a round's record is missing
    or the values do not reproduce the run's mean trajectory KL (to 1e-9 relative)."""
    from .leaderboard import per_prompt

    if run.get("round") == "all":
        per = per_prompt(run)
    else:
        per = pd.concat([per_prompt(r) for r in _round_runs(run, runs or [])], ignore_index=True)
    kl = per.groupby("continuation_id", sort=True)["kl_nats"].sum()
    want = run["metrics"][STEP_METRIC]["total"][0]
    if not np.isclose(kl.mean(), want, rtol=1e-9, atol=1e-12):
        raise ValueError(f"run {run['run_id']}: per-sample trajectory KL averages {kl.mean()!r}, the record says "
                         f"{want!r} (a sample without steps, or a damaged record)")
    return kl


def values(run: dict[str, Any], metric: str, runs: list[dict[str, Any]] | None = None) -> np.ndarray:
    """A trajectory metric's per-question (whole continuations) or per-sample (``trajectory_kl``) values of ``run``,
    ``(n,)`` float64 (module doc); ``run`` is a whole-continuation run, or a step-wise one for ``trajectory_kl``."""
    from .leaderboard import per_prompt

    kind = STEPS if metric == STEP_METRIC else WHOLE
    if run.get("questions") != kind:
        raise ValueError(f"run {run['run_id']} holds {run.get('questions') or 'next-token'} questions; {metric} is "
                         f"read from a {kind} run")
    if metric == STEP_METRIC:
        return sample_kl(run, runs).to_numpy(np.float64)
    return question_values(per_prompt(run), metric)


def gap_table(ordinary: str, shifted: str, split: str = "sealed", *, runs: list[dict[str, Any]] | None = None,
              root: Path | None = None, metrics: tuple[str, ...] = METRICS, seed: int = 0,
              release: bool | None = None) -> pd.DataFrame:
    """``evals.gap.COLUMNS`` rows, one per (predictor label with a trajectory run of the metric's kind on both
    suites' ``split``, metric): each suite's mean [CI] and the gap [CI] (``gap_ci``); latest run per label and kind
    (as the trajectory leaderboard). ``trajectory_kl`` rows need a complete step-wise attempt on both (suites built
    with samples); ``n_*`` count questions, or samples for ``trajectory_kl``. ``release`` (default: True for sealed)
    puts the numbers on the holdout grid. Empty when neither suite has trajectory runs (e.g. next-token suites)."""
    from .leaderboard_trajectory import _latest
    from .records import read_runs

    runs = read_runs(root) if runs is None else runs
    release = split == "sealed" if release is None else release
    latest = {kind: (_latest(runs, ordinary, split, kind), _latest(runs, shifted, split, kind))
              for kind in (WHOLE, STEPS)}
    rows = []
    for metric in metrics:
        a, b = latest[STEPS if metric == STEP_METRIC else WHOLE]
        for label in sorted(set(a) & set(b)):
            g = gap_ci(values(a[label], metric, runs), values(b[label], metric, runs), seed=seed)
            if release:
                g = released_gap(g, holdout.step_for(metric))
            rows.append(gap_row(ordinary, shifted, split, label, metric, g, a[label]["run_id"], b[label]["run_id"]))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["predictor", "metric"], key=lambda c: c.map(
        {m: i for i, m in enumerate(metrics)}) if c.name == "metric" else c, kind="stable").reset_index(drop=True)
