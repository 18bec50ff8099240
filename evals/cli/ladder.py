"""``logitpred ladder CONFIG``: train helpers of growing size and approve each with the team approved before it
(``evals.ladder``; the config format is in ``docs/ladder.md``).

Exit codes: 0 every rung (and composite) approved, 1 one failed its thresholds (the chain so far is written; later
rungs are not trained), 2 bad input (config, suites, approvers, training settings), named in the message.

``logitpred ladder CONFIG --table`` trains nothing: after a ladder run it measures the team approved at each level on
the *target* with one gate per level (``evals.ladder_table``) and prints the table docs/ladder.md shows, with
``--beside`` predictors' latest sealed runs for comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, fail, out


def ladder(
    config: Annotated[Path, typer.Argument(help="Ladder config (YAML): name, suites, thresholds, train, rungs.")],
    table: Annotated[bool, typer.Option("--table", help="Train nothing: run one gate per level of the finished "
                                        "ladder (the team approved so far, on the target's sealed suites) and print "
                                        "the table.")] = False,
    beside: Annotated[list[str] | None, typer.Option("--beside", help="With --table: predictors whose latest sealed "
                                                     "runs are shown for comparison (repeat).")] = None,
) -> None:
    """Train the rungs in order; approve rung k+1 with level 0 and the rungs (and composites) approved so far."""
    from predictors.approval import ApprovalError
    from predictors.crosstok import MappingError
    from predictors.model import HelperError

    from ..ladder import LadderConfigError, load_ladder, run_ladder

    try:
        cfg = load_ladder(config)
    except LadderConfigError as e:
        fail(f"ladder config: {e}")
    if table:
        _table(cfg, beside or [])
        return
    try:
        result = run_ladder(cfg, on_stage=lambda s: console.print(s, markup=False, highlight=False))
    except (ApprovalError, HelperError, MappingError, KeyError, TypeError, ValueError, OSError) as e:
        fail(f"{e.args[0] if isinstance(e, KeyError) else e}; the chain so far is in the ladder record")
    from rich.table import Table

    table = Table("step", "system", "parameters", "valid loss", "level", "approved", "chosen approver per suite",
                  title=f"ladder {cfg.name}")
    for e in result.chain:
        t = e.get("training") or {}
        table.add_row(e["rung"] if e["step"] == "rung" else f"{e['rung']} composite", e["system"]["name"] + " "
                      + str(e["system"]["options"]), f"{t['parameters']:,}" if t.get("parameters") else "",
                      f"{t['final_valid_loss']:.3f}" if t.get("final_valid_loss") is not None else "",
                      str(e["level"]), "yes" if e["approved"] else "NO",
                      "; ".join(f"{s}: {a}" for s, a in e["chosen"].items()))
    out.print(table)
    out.print(f"chain: {result.path}")
    if not result.complete:
        out.print("[bold red]STOPPED[/]: a step failed its thresholds; later rungs were not trained")
        raise typer.Exit(1)
    out.print(f"[bold green]COMPLETE[/]: {len(cfg.rungs)} rungs approved in a chain")


def _table(cfg, beside: list[str]) -> None:
    from ..gate import GateConfigError
    from ..holdout import HoldoutError
    from ..ladder_table import ladder_table, reference_rows, to_markdown

    try:
        result = ladder_table(cfg, on_stage=lambda s: console.print(s, markup=False, highlight=False))
    except (FileNotFoundError, GateConfigError) as e:
        fail(f"ladder table: {e}")
    except HoldoutError as e:
        fail(f"ladder table refused by the holdout limit: {e}", code=1)
    typer.echo(to_markdown(result, reference_rows(beside, list(cfg.suites))))
    typer.echo("Team KL: sealed mean KL(target || team) in nats, 95% bootstrap CI, released on the gate's 0.05 grid; "
               "one gate per level (reports under results/gates/). An evaluation among many, not a proof of safety.")


def register(app: typer.Typer) -> None:
    app.command("ladder")(ladder)
