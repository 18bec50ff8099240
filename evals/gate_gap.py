"""The predictability gap in the gate (issue 14 part 4): a ``gap:`` section bounds how much worse the team does on a
found (shifted) suite than on an ordinary one.

```yaml
gap:
  - {ordinary: wiki, shifted: wiki-found, metric: kl_nats, max: 1.0}   # upper 95% bound of the gap <= 1.0 nats
  - {ordinary: wiki, shifted: wiki-found, metric: top1}                # reported, not bounded
```

Both suites must be listed under ``suites:`` (the team is scored on each there, by the team rule, and those run
records are what the gap reads: nothing is scored twice, no extra sealed submission is made) and be next-token
suites; ``metric`` is a per-prompt next-token metric (``evals.gate.metric_names``), ``statistic`` mean (default),
median or p90. The gap is ``statistic(shifted) - statistic(ordinary)`` of the team's per-prompt values with the
independent-bootstrap 95% CI of ``evals.gap.gap_ci`` (the suites' prompts are different prompts: each is resampled on
its own). ``{max: x}`` passes when the upper CI bound is <= x, ``{min: x}`` when the lower bound is >= x; with
neither, the gap is reported and always passes. When either suite is gated on its sealed split the gap is released on
the holdout grid of its metric (bounds outward), and the decision uses the released bounds.

Left out: trajectory metrics in the gap.
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
        if metric not in metric_names():
            raise GateConfigError(f"{at}.metric: {metric!r} is not a per-prompt next-token metric; use one of "
                                  f"{', '.join(metric_names())}")
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
    """Before anything runs: both suites of every criterion are next-token suites (``GateConfigError`` if not)."""
    from .gate import GateConfigError
    from .gate_trajectory import is_trajectory

    for i, g in enumerate(cfg.gap):
        for k in ("ordinary", "shifted"):
            if is_trajectory(suites[getattr(g, k)]):
                raise GateConfigError(f"gap[{i}].{k}: {getattr(g, k)!r} is a trajectory suite; the gap is measured on "
                                      "next-token suites only")


def section(cfg: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``gap`` section from the suites' results (their run records' per-prompt values): per criterion
    the team's statistic on each suite (``ordinary``, ``shifted``: [estimate, low, high]), the gap with its CI
    (``gap``, ``low``, ``high``; released when a split is sealed), ``suites`` (the two names), the decision."""
    by_name = {r["suite"]: r for r in results}
    checks = []
    for g in cfg.gap:
        a, b = by_name[g.ordinary], by_name[g.shifted]
        va, vb = (pd.read_csv(results_dir() / r["run_id"] / "per_prompt.csv")[g.metric].to_numpy() for r in (a, b))
        sealed = "sealed" in (a["split"], b["split"])
        step = holdout.step_for(g.metric, cfg.steps) if sealed else None
        res = released_gap(gap_ci(va, vb, statistic=g.statistic, seed=cfg.seed), step)
        compared = res["high"] if g.bound == "max" else res["low"] if g.bound == "min" else None
        ok = True if g.bound is None else (compared <= g.limit if g.bound == "max" else compared >= g.limit)
        checks.append({"suites": [g.ordinary, g.shifted], "splits": [a["split"], b["split"]], "metric": g.metric,
                       **res, "step": step, "bound": g.bound,
                       "threshold": g.limit, "compared": compared, "passed": bool(ok),
                       "team": [a["team"].get("chosen", "mixture"), b["team"].get("chosen", "mixture")],
                       "runs": [a["run_id"], b["run_id"]]})
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
