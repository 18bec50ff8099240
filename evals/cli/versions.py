"""CLI for versions of a target: ``versions build FILE``, ``versions report FILE``, ``versions approve FILE NAME``.

Exit codes (``evals/cli/common.py``): 0 done (``approve``: approved); 1 the work ran and failed (``approve``: a
threshold failed, nothing recorded); 2 bad input: the series file, a suite not built, a version whose model is missing,
has another tokenizer or vocabulary, cannot be loaded or gives NaN (the message names the version), a gate config or
team member that is not approved. No command here writes to the approval registry except a passing ``approve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import console, fail, out, progress

versions_app = typer.Typer(help="Versions of a target: truth per version, drift, the gate per version, the previous "
                                "version as a predictor (docs/versions.md).", no_args_is_help=True)
SeriesFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                            help="Version series YAML (see versions.yaml).")]


def _series(file: Path) -> Any:
    from tasks.versions import VersionsError, load_series

    try:
        return load_series(file)
    except VersionsError as e:
        fail(str(e))



def _bad(e: Exception) -> None:
    fail(f"{e}; the approval registry is unchanged")


@versions_app.command("build")
def build(
    file: SeriesFile,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass (float32/bfloat16 versions).")] = 8,
    rebuild: Annotated[bool, typer.Option(help="Recompute truth even when cached.")] = False,
) -> None:
    """Compute every version's truth on the series' suites (cached, committed); register version:NAME predictors."""
    from tasks.versions import VersionsError

    from ..versions import build_series

    spec = _series(file)
    try:
        with progress() as bar:
            tasks: dict[str, Any] = {}

            def step(split: str, n: int, total: int) -> None:
                if split not in tasks:
                    tasks[split] = bar.add_task(f"{split}", total=total)
                bar.advance(tasks[split], n)

            def stage(s: str) -> None:
                tasks.clear()
                console.print(s)

            record = build_series(spec, batch_size=batch_size, rebuild=rebuild, on_stage=stage, on_progress=step)
    except (VersionsError, ValueError) as e:
        _bad(e)
    for v in record["versions"]:
        commitments = ", ".join(f"{s} {t['commitment'][:16]}" for s, t in v["truth"].items())
        out.print(f"version [bold]{v['name']}[/] ({v['dtype']}, {v['quantize']}, id {v['identity']['id']}): "
                  f"commitment {commitments}")
    out.print(f"series {spec.name}: predictors " + ", ".join(f"version:{v['name']}" for v in record["versions"]))


@versions_app.command("report")
def report(
    file: SeriesFile,
    allow_unapproved: Annotated[bool, typer.Option(help="Let unapproved versions predict the next, marked "
                                                        "unapproved (exploratory).")] = False,
    gate: Annotated[bool, typer.Option(help="Run the series' gate config per version.")] = True,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Drift per consecutive pair, the gate per version, the previous version vs corpus statistics on the next."""
    from tasks.versions import VersionsError

    from ..holdout import HoldoutError
    from ..versions import series_report

    spec = _series(file)
    try:
        rep = series_report(spec, allow_unapproved=allow_unapproved, seed=seed, gate=gate,
                            on_stage=lambda s: console.print(s))
    except HoldoutError as e:
        fail(str(e), 1)
    except (VersionsError, ValueError) as e:
        _bad(e)
    from ..versions import render

    out.print(render(rep), markup=False, highlight=False, soft_wrap=True)
    out.print(f"report: {rep['dir']}/report.md")


@versions_app.command("approve")
def approve(
    file: SeriesFile,
    name: Annotated[str, typer.Argument(help="The version to approve (as version:NAME).")],
    approver: Annotated[list[str] | None, typer.Option(help="Approved predictors that predict it (repeat; default: "
                                                            "the team of --config, else of the series' gate, else "
                                                            "every level-0 predictor).")] = None,
    config: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                help="A gate config whose team (members with options, rule) "
                                                     "predicts the version.")] = None,
    max_kl: Annotated[float, typer.Option(help="Threshold: upper CI bound of sealed mean KL (nats) <= this.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Evaluate version NAME as a target with the approved team; record an approval of version:NAME if every suite
    passes (then it may predict the next version)."""
    from predictors import available
    from predictors.approval import is_level0
    from tasks.versions import VersionsError

    from ..gate import load_config
    from ..versions import approve_version, load_built, team_of

    spec = _series(file)
    try:
        spec.version(name)
        built = load_built(spec)
        if approver:
            team = team_of(list(approver), seed=seed)
        elif config or spec.gate:
            team = load_config(config or spec.gate)
        else:
            team = team_of([n for n in available() if is_level0(n)], seed=seed)
        result = approve_version(name, built[name], team=team, max_kl=max_kl, seed=seed)
    except (VersionsError, ValueError) as e:
        _bad(e)
    for s in result["suites"]:
        for c in s["checks"]:
            out.print(f"{s['suite']}: approver {s['approver']} (best on practice), {c['metric']} {c['estimate']:.3f} "
                      f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}], bound {c['bound']:.3f} {c['op']} {c['threshold']}: "
                      f"{'pass' if c['passed'] else 'FAIL'}", soft_wrap=True)
    if not result["approved"]:
        out.print(f"version:{name} is NOT approved (identity {result['key']}); nothing recorded")
        raise typer.Exit(1)
    out.print(f"version:{name} approved at level {result['level']} (identity {result['key']})")


def register(app: typer.Typer) -> None:
    app.add_typer(versions_app, name="versions")
