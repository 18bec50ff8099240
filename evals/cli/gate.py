"""CLI commands of the evaluation layer: ``logitpred gate``, ``logitpred leaderboard``, ``logitpred report``.

Exit codes follow ``evals/cli/common.py``: ``gate`` exits 0 on PASS, 1 on FAIL or when the holdout limit refuses it, and 2 on
a config error (with a message naming the key), so a release pipeline can call it directly. A ``rare:`` section
(``evals.gate_rare``) adds bounds on P_D(B) from estimators that run the target, and a tolerance on the team's
rare-behaviour predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, fail, out


def gate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Gate config (YAML); see gate.yaml and docs/gate.md.")]
    = Path("gate.yaml"),
) -> None:
    """Run the pre-deployment gate: suites x approved team, thresholds on CI bounds, optional rare-behaviour bounds;
    exit 0 pass, 1 fail, 2 config."""
    from predictors.chain import ChainError
    from tasks.io import read_text

    from ..gate import GateConfigError, load_config, run_gate
    from ..holdout import HoldoutError
    from ..scoring import ScoringError

    try:
        cfg = load_config(config)
        rare = (f", {len(cfg.rare.criteria)} rare-behaviour criteria" + (" and a rare-prediction tolerance"
                                                                          if cfg.rare.predictors else "")
                if cfg.rare is not None else "")
        with console.status(f"gate {cfg.name}: {len(cfg.suites)} suite(s){rare}, team of {len(cfg.members)}"):
            report = run_gate(cfg)
    except GateConfigError as e:
        fail(f"gate config: {e}", code=2)
    except (ScoringError, ChainError) as e:  # ChainError: a member's answers to trajectory questions are unusable
        fail(f"gate could not score the team: {e}", code=1)
    except HoldoutError as e:  # a limit reached while running (the scorers' own $LOGITPRED_SEALED_LIMIT check)
        fail(f"gate refused while running: {e}", code=1)
    typer.echo(read_text(Path(report["report_dir"], "report.md")))  # plain: rich would re-wrap the tables
    typer.echo(f"report: {report['report_dir']}/report.md (and report.json)")
    raise typer.Exit(0 if report["verdict"] == "PASS" else 1)


def leaderboard(
    suite: Annotated[list[str] | None, typer.Option("--suite", "-s", help="Suites to rank (repeat; default: all "
                                                     "suites with runs on the split).")] = None,
    split: Annotated[str, typer.Option("--split", help="practice (feedback allowed) or sealed (held back).")]
    = "sealed",
    html: Annotated[bool, typer.Option(help="Also write the self-contained HTML page with plots.")] = True,
) -> None:
    """Rank predictors per suite by mean KL (trajectory suites: mean |log10 error| of whole continuations, beside the
    trajectory KL) with 95% bootstrap CIs and paired tests between neighbours; writes Markdown, CSV and HTML under
    results/leaderboards/."""
    from rich.table import Table

    from .. import leaderboard as lb

    df = lb.leaderboards(suite, split)
    if df.empty:
        where = f"suite(s) {', '.join(suite)}" if suite else "any suite"
        fail(f"no scored runs for {where} on split {split!r}: run `logitpred score` or `logitpred run` first", code=1)
    paths = lb.write_all(df, split, plots=html)
    for name, part in df.groupby("suite", sort=False):
        tr = part[part["questions"] == "trajectory"]
        if len(tr):  # a trajectory suite: whole-continuation errors and the trajectory KL
            shown = [lb.traj.cells(r) for _, r in tr.iterrows()]
            table = Table("#", *shown[0], title=f"{name} / {split}: trajectory questions (lower is better)")
            for i, c in enumerate(shown, 1):
                table.add_row(str(i), *c.values())
            out.print(table)
        part = part[part["questions"] != "trajectory"]
        if part.empty:
            continue
        table = Table("#", "predictor", "n", "mean KL nats [95% CI]", "vs next ΔKL [95% CI]", "p", "top-1",
                      title=f"{name} / {split} (lower KL is better)")
        for i, r in part.reset_index(drop=True).iterrows():
            vs = "-" if r["delta_next"] != r["delta_next"] else (
                f"{r['delta_next']:.3f} [{r['delta_ci_low']:.3f}, {r['delta_ci_high']:.3f}]")
            table.add_row(str(i + 1), r["predictor"] + ("" if r["approved"] else " (unapproved)"), str(r["n"]),
                          f"{r['kl_mean']:.3f} [{r['kl_ci_low']:.3f}, {r['kl_ci_high']:.3f}]", vs,
                          lb._p(r["p_wilcoxon"]), f"{100 * r['top1']:.1f}%")
        out.print(table)
    written = [paths["md"], paths["csv"]] + ([paths["html"]] if html else [])
    out.print("written: " + ", ".join(map(str, written)), markup=False)


def report(run_id: Annotated[str, typer.Argument(help="Run id (folder under results/) or gate report id; a unique "
                                                  "prefix is enough.")]) -> None:
    """Re-render a run's (or gate's) report from its stored records, without recomputing anything."""
    from ..report import render

    try:
        md, paths = render(run_id)
    except FileNotFoundError as e:
        fail(str(e), code=2)
    typer.echo(md)
    typer.echo("written: " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    app.command("gate")(gate)
    app.command("leaderboard")(leaderboard)
    app.command("report")(report)
