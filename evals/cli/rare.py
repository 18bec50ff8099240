"""``logitpred rare``: rare behaviours under input distributions (``tasks.rare``): ``rare build`` computes the exact
reference set of a spec (``rare.yaml``), ``rare show`` prints it.

Exit codes: 0 done, 2 bad input (a spec error, an unknown behaviour or distribution, a support too large to enumerate,
a behaviour text that does not tokenize as itself after a prefix), named in the message; a failed build keeps the
previous record.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import DeviceOpt, DTypeOpt, fail, out, progress

rare_app = typer.Typer(help="Rare behaviours: exact reference probabilities, estimators, predictions.",
                       no_args_is_help=True)
SpecOpt = Annotated[Path, typer.Option("--spec", help="Behaviours and input distributions (YAML).")]


def _spec(path: Path):
    from tasks.rare.spec import SpecError, read_spec

    try:
        return read_spec(path)
    except SpecError as e:
        fail(str(e))


@rare_app.command("build")
def rare_build(spec: SpecOpt = Path("rare.yaml"), device: DeviceOpt = "cpu", dtype: DTypeOpt = "float32") -> None:
    """Enumerate every product distribution's support once and compute P_D(B) exactly for the reference tokens and
    the declared behaviours, at temperature 1 and 0; prints the table and the commitment."""
    from tasks import TargetError, load_target
    from tasks.rare import BehaviourError, DistributionError
    from tasks.rare.reference import build_reference
    from tasks.rare.spec import SpecError

    s = _spec(spec)
    try:
        target = load_target(device=device, dtype=dtype)
    except TargetError as e:
        fail(str(e))
    try:
        with progress() as bar:
            tasks: dict[str, int] = {}

            def advance(did: str, n: int, total: int) -> None:
                if did not in tasks:
                    tasks[did] = bar.add_task(f"enumerating {did}", total=total)
                bar.advance(tasks[did], n)

            rec = build_reference(s, target, on_progress=advance)
    except (SpecError, BehaviourError, DistributionError, ValueError) as e:
        fail(str(e))
    _print(rec, f"reference set of {spec}")


def _print(rec: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table("distribution", "behaviour", "T", "P_D(B)", "log10", title=title)
    for r in rec["rows"]:
        p = r["p_exact"]
        table.add_row(r["distribution"], r["behaviour"], str(r["temperature"]), f"{p:.3e}",
                      f"{math.log10(p):.2f}" if p > 0 else "-inf")
    out.print(table)
    for did, d in rec["distributions"].items():
        out.print(f"{did}: {d.get('support', 'suite')} inputs, {d['passes']} forward passes, "
                  f"{rec['seconds'][did]:.1f} s")
    out.print(f"commitment {rec['commitment']}")


@rare_app.command("show")
def rare_show(spec: SpecOpt = Path("rare.yaml")) -> None:
    """Print the built reference set of a spec for the default target (exit 2 when it is not built)."""
    from tasks.rare.reference import load_reference
    from tasks.target import load_tokenizer

    s = _spec(spec)
    rec = load_reference(s, load_tokenizer()[1].id)
    if rec is None:
        fail(f"the reference set of {spec} is not built for this target: run `logitpred rare build --spec {spec}`")
    _print(rec, f"reference set of {spec}")


def register(app: typer.Typer) -> None:
    app.add_typer(rare_app, name="rare")
