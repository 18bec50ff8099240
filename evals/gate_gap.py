"""The predictability gap in the gate (issue 14 part 4): a ``gap:`` section bounds how much worse the team does on a
found (shifted) suite than on an ordinary one.

```yaml
gap:
  - {ordinary: wiki, shifted: wiki-found, metric: kl_nats, max: 1.0}   # upper 95% bound of the gap <= 1.0 nats
  - {ordinary: wiki, shifted: wiki-found, metric: top1}                # reported, not bounded
  - {ordinary: wiki-traj, shifted: wiki-found-traj, metric: mean_abs_log10_error, max: 0.5}   # trajectory suites
```

Both suites must be listed under ``suites:`` (the team is scored on each there, by the team rule, and those run
records are what the gap reads: nothing is scored twice) and be of one kind. On next-token suites ``metric`` is a
per-prompt next-token metric (``evals.gate.metric_names``); on trajectory suites a trajectory metric
(``evals.gate_trajectory.TRAJECTORY_METRICS``: the whole-continuation ones per question, ``trajectory_kl`` per target
sample, suites built with samples only; ``evals.gap_trajectory``). A metric of the other kind, or suites of two kinds,
is a config error (exit 2) naming the metric and the suites' kinds. When a suite's own thresholds do not already make
the gate score what the gap reads (the whole continuations, or a step-wise attempt for ``trajectory_kl``), the gate
scores it too (``needs``), and that is counted as a sealed submission before anything runs. ``statistic``: mean
(default), median or p90. The gap is ``statistic(shifted) - statistic(ordinary)`` of the team's per-prompt (or
per-question, per-sample) values with the independent-bootstrap 95% CI of ``evals.gap.gap_ci`` (the suites' prompts
are different prompts: each is resampled on its own). ``{max: x}`` passes when the upper CI bound is <= x, ``{min: x}`` when the lower bound is >= x; with
neither, the gap is reported and always passes. When either suite is gated on its sealed split the gap is released on
the holdout grid of its metric (bounds outward), and the decision uses the released bounds.

Left out: a gap between a next-token suite and a trajectory suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from tasks.paths import results_dir

from . import holdout
from .gap import gap_ci, released_gap

KEYS = {"ordinary", "shifted", "metric", "statistic", "max", "min"}


@dataclass(frozen=True)
class GapCriterion:
    ordinary: str
    shifted: str
    metric: str = "kl_nats"
    statistic: str = "mean"
    bound: str | None = None  # "max", "min" or None (reported only)
    limit: float | None = None


def parse(raw: Any, suites: Any) -> tuple[GapCriterion, ...]:
    """Check a ``gap:`` section against the config's suite specs; raises ``GateConfigError`` naming the key."""
    from .gate import STATISTICS, GateConfigError, _keys, metric_names
    from .gate_trajectory import TRAJECTORY_METRICS

    if not isinstance(raw, list) or not raw:
        raise GateConfigError("gap: list at least one criterion, e.g. - {ordinary: wiki, shifted: wiki-found, "
                              "metric: kl_nats, max: 1.0}")
    names = {s.name for s in suites}
    out = []
    for i, g in enumerate(raw):
        at = f"gap[{i}]"
        _keys(g, at, KEYS, {"ordinary", "shifted"})
        for k in ("ordinary", "shifted"):
            if g[k] not in names:
                raise GateConfigError(f"{at}.{k}: suite {g[k]!r} is not under suites: list it there (the team is "
                                      "scored on it there)")
        if g["ordinary"] == g["shifted"]:
            raise GateConfigError(f"{at}: ordinary and shifted name the same suite {g['ordinary']!r}")
        metric = g.get("metric", "kl_nats")
        if metric not in metric_names() and metric not in TRAJECTORY_METRICS:
            raise GateConfigError(f"{at}.metric: {metric!r} is not a per-prompt next-token metric (on next-token "
                                  f"suites: {', '.join(metric_names())}) nor a trajectory metric (on trajectory "
                                  f"suites: {', '.join(TRAJECTORY_METRICS)})")
        stat = g.get("statistic", "mean")
        if stat not in STATISTICS:
            raise GateConfigError(f"{at}.statistic: {stat!r} is not one of {', '.join(STATISTICS)}")
        bounds = [b for b in ("max", "min") if b in g]
        if len(bounds) > 1:
            raise GateConfigError(f"{at}: give at most one of max and min")
        limit = g[bounds[0]] if bounds else None
        if bounds and (isinstance(limit, bool) or not isinstance(limit, int | float) or limit != limit
                       or abs(limit) == float("inf")):
            raise GateConfigError(f"{at}.{bounds[0]}: {limit!r} is not a finite number")
        out.append(GapCriterion(str(g["ordinary"]), str(g["shifted"]), metric, stat, bounds[0] if bounds else None,
                                None if limit is None else float(limit)))
    return tuple(out)


def check(cfg: Any, suites: dict[str, Any]) -> None:
    """Before anything runs: both suites of every criterion are of one kind, the metric is of that kind, and a
    ``trajectory_kl`` gap has samples on both suites (module doc); raises ``GateConfigError`` (exit 2) naming the
    criterion, the metric and the suites' kinds."""
    from tasks.trajectory import asked, spec

    from .gate import GateConfigError
    from .gate_trajectory import STEP_METRIC, is_trajectory, kind_of_metric

    for i, g in enumerate(cfg.gap):
        kinds = {k: "trajectory" if is_trajectory(suites[getattr(g, k)]) else "next-token"
                 for k in ("ordinary", "shifted")}
        shown = f"{g.ordinary!r} is a {kinds['ordinary']} suite and {g.shifted!r} a {kinds['shifted']} suite"
        if kinds["ordinary"] != kinds["shifted"]:
            raise GateConfigError(f"gap[{i}]: {shown}; a gap compares two suites of one kind (build the found suite "
                                  "with the ordinary suite's --continuation, or pick an ordinary suite of its kind)")
        kind = kinds["ordinary"]
        if kind_of_metric(g.metric) != kind:
            other = "trajectory" if kind == "next-token" else "next-token"
            example = "mean_abs_log10_error, trajectory_kl, ..." if kind == "trajectory" else "kl_nats, top1, ..."
            raise GateConfigError(f"gap[{i}].metric: {g.metric} is a {other} metric and {shown}; use a {kind} metric "
                                  f"for them ({example})")
        for k in ("ordinary", "shifted"):
            name = getattr(g, k)
            if kind == "trajectory" and g.metric == STEP_METRIC and not spec(suites[name]).k:
                raise GateConfigError(f"gap[{i}].metric: {STEP_METRIC} is measured along the target's samples and "
                                      f"{k} suite {name!r} has none (built without --samples); rebuild it with "
                                      "--samples K or use mean_abs_log10_error")
            if kind == "trajectory" and g.metric != STEP_METRIC and not asked(suites[name])["whole_continuation"]:
                raise GateConfigError(f"gap[{i}].metric: {g.metric} is read from whole-continuation questions and "
                                      f"{k} suite {name!r} asks none")


def needs(cfg: Any, suite: str) -> set[str]:
    """The trajectory metrics the ``gap:`` criteria read on ``suite`` (what ``evals.gate_trajectory`` must score
    there besides its thresholds): ``trajectory_kl`` (a step-wise attempt) and/or one whole-continuation metric."""
    from .gate_trajectory import STEP_METRIC, TRAJECTORY_METRICS

    return {g.metric if g.metric == STEP_METRIC else "mean_abs_log10_error" for g in cfg.gap
            if g.metric in TRAJECTORY_METRICS and suite in (g.ordinary, g.shifted)}


def _values(result: dict[str, Any], metric: str) -> Any:
    """The team's per-prompt (next-token) or per-question / per-sample (trajectory) values on one suite's result."""
    from tasks.io import read_json

    from . import gap_trajectory

    if result.get("kind") != "trajectory":
        return pd.read_csv(results_dir() / result["run_id"] / "per_prompt.csv")[metric].to_numpy()
    run_id = result["run_ids"]["step_wise" if metric == gap_trajectory.STEP_METRIC else "whole_continuations"]
    run = {**read_json(results_dir() / run_id / "summary.json"), "_dir": str(results_dir() / run_id)}
    return gap_trajectory.values(run, metric)


def section(cfg: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``gap`` section from the suites' results (their run records' per-prompt values): per criterion
    the team's statistic on each suite (``ordinary``, ``shifted``: [estimate, low, high]), the gap with its CI
    (``gap``, ``low``, ``high``; released when a split is sealed), ``suites`` (the two names), the decision."""
    by_name = {r["suite"]: r for r in results}
    checks = []
    for g in cfg.gap:
        a, b = by_name[g.ordinary], by_name[g.shifted]
        va, vb = (_values(r, g.metric) for r in (a, b))
        sealed = "sealed" in (a["split"], b["split"])
        step = holdout.step_for(g.metric, cfg.steps) if sealed else None
        res = released_gap(gap_ci(va, vb, statistic=g.statistic, seed=cfg.seed), step)
        compared = res["high"] if g.bound == "max" else res["low"] if g.bound == "min" else None
        ok = True if g.bound is None else (compared <= g.limit if g.bound == "max" else compared >= g.limit)
        checks.append({"suites": [g.ordinary, g.shifted], "splits": [a["split"], b["split"]], "metric": g.metric,
                       **res, "step": step, "bound": g.bound,
                       "threshold": g.limit, "compared": compared, "passed": bool(ok),
                       "team": [a["team"].get("chosen", "mixture"), b["team"].get("chosen", "mixture")],
                       "runs": [a["run_id"], b["run_id"]] if a.get("kind") != "trajectory" else
                       [r["run_ids"]["step_wise" if g.metric == "trajectory_kl" else "whole_continuations"]
                        for r in (a, b)]})
    return {"checks": checks, "passed": all(c["passed"] for c in checks)}


def markdown(sec: dict[str, Any]) -> list[str]:
    """The gap section of the gate report (Markdown lines)."""
    lines = ["", f"## Predictability gap: **{'PASS' if sec['passed'] else 'FAIL'}**", "",
             "gap = team statistic on the shifted (found) suite - on the ordinary suite; 95% CI from resampling each "
             "suite's prompts independently (different prompts, not paired).", "",
             "| ordinary | shifted | metric | ordinary [95% CI] | shifted [95% CI] | gap [95% CI] | threshold | "
             "result |", "|---|---|---|---|---|---|---|---|"]

    def f(x: float) -> str:  # no "-0.000" for a tiny negative
        return f"{round(x, 3) + 0.0:.3f}"

    for c in sec["checks"]:
        o, s = c["suites"]
        cond = "reported" if c["bound"] is None else (f"{'upper' if c['bound'] == 'max' else 'lower'} bound "
                                                      f"{'<=' if c['bound'] == 'max' else '>='} {c['threshold']:g}")
        lines.append(f"| {o} ({c['splits'][0]}, team {c['team'][0]}) | {s} ({c['splits'][1]}, team {c['team'][1]}) "
                     f"| {c['statistic']} {c['metric']} | {f(c['ordinary'][0])} [{f(c['ordinary'][1])}, "
                     f"{f(c['ordinary'][2])}] (n={c['n_ordinary']}) | {f(c['shifted'][0])} [{f(c['shifted'][1])}, "
                     f"{f(c['shifted'][2])}] (n={c['n_shifted']}) | {f(c['gap'])} [{f(c['low'])}, {f(c['high'])}] | "
                     f"{cond} | {'pass' if c['passed'] else '**FAIL**'} |")
    if any(c["step"] for c in sec["checks"]):
        lines.append("\nSealed: on the release grid, bounds rounded outward; the decision uses the released bounds.")
    return lines
