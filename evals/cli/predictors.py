"""``logitpred predictors list | build NAME | indexes``: registered predictors and corpus-statistics indexes.

``build`` creates the predictor for a suite exactly as ``logitpred run`` would (so the index it builds is the one
``run`` reuses): n-gram tables or suffix arrays over the train parts of the chosen corpora, with a progress bar, saved
under ``<data dir>/indexes/``; for ``mixture`` it also fits and prints the weights. ``--rebuild`` rebuilds valid
indexes too (the way out of a corrupted or stale one). Predictors without an index are reported, not an error.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .common import fail, load_suite, out, parse_options

INDEXED = ("ngram", "ngram-domain", "suffix", "mixture")  # factories taking ``rebuild``
predictors_app = typer.Typer(help="List and build predictors.", no_args_is_help=True)


@predictors_app.command("list")
def predictors_list() -> None:
    """List registered predictor names (built-in and from installed plugins)."""
    from predictors import available

    for name in available():
        out.print(name)


def register(app: typer.Typer) -> None:
    predictors_app.command("build")(predictors_build)
    predictors_app.command("indexes")(predictors_indexes)
    app.add_typer(predictors_app, name="predictors")


def predictors_build(
    name: Annotated[str, typer.Argument(help="Predictor name: ngram, ngram-domain, suffix or mixture.")],
    suite: Annotated[str, typer.Option("--suite", "-s", help="Suite whose split seed and corpus define the "
                                       "train text (held-out documents never enter an index).")] = "wiki",
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="Predictor option key=value, e.g. "
                                                     "order=4 or corpora=wiki,news.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild even if a valid index exists.")] = False,
) -> None:
    """Build (or verify and reuse) a corpus-statistics predictor's index for a suite."""
    from predictors import PredictorContext, available, create
    from predictors.index import IndexFileError

    if name not in available():
        fail(f"unknown predictor {name!r}; available: {', '.join(available())}")
    if name not in INDEXED:
        out.print(f"predictor {name!r} has no index to build (indexed predictors: {', '.join(INDEXED)})")
        return
    s = load_suite(suite)
    options = parse_options(option)
    try:
        p = create(name, PredictorContext.from_suite(s), **options, rebuild=rebuild)
    except IndexFileError as e:
        fail(str(e))
    except (KeyError, TypeError, ValueError) as e:
        fail(str(e.args[0] if isinstance(e, KeyError) else e))
    ident: dict[str, Any] = p.identity()
    indexes = ident.get("index") or [i.get("index") for i in ident.get("member_identities", []) if i.get("index")]
    out.print(f"[bold]{name}[/] ready for suite {s.name}: index {indexes}")
    if name == "mixture":
        out.print(f"fitted on {ident['fitted_on']} practice prompts: practice KL {ident['practice_kl']:.4f} nats, "
                  f"temperature {ident['temperature']:.3f}")
        out.print_json(json.dumps(ident["weights"]))


def predictors_indexes() -> None:
    """List built indexes: kind, corpora and tokens, parameters, size on disk, build time."""
    from rich.table import Table

    from tasks.io import read_json
    from tasks.paths import data_dir

    table = Table("index", "corpora (train tokens)", "params", "MB", "built in", "built")
    table.columns[0].no_wrap = True
    for manifest_path in sorted((data_dir() / "indexes").glob("*/manifest.json")):
        try:
            m = read_json(manifest_path)
        except (ValueError, UnicodeDecodeError):
            table.add_row(manifest_path.parent.name, "[red]unreadable manifest: rebuild[/]", "", "", "", "")
            continue
        size = sum(f.stat().st_size for f in manifest_path.parent.iterdir()) / 1e6
        corpora = ", ".join(f"{c['name']} ({c['tokens']:,})" for c in m.get("corpora", []))
        table.add_row(manifest_path.parent.name, corpora, json.dumps(m.get("params")), f"{size:.0f}",
                      f"{m.get('build_seconds', 0):.1f} s", str(m.get("built", ""))[:19])
    out.print(table)
