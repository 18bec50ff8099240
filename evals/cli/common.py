"""What every command module shares: the consoles, the one error path (exit codes), progress bars, and the argument
types that validate input before any work starts.

Exit codes: 0 success, 1 the work ran and failed (nothing valid to score, a gate failed, strict mode), 2 bad input
(an argument, a file, a config). Arguments are checked in one place, by the parameter types below (``Literal`` choices, ``min=``
bounds, ``exists=True`` paths, ``open_fraction``): a split name
that is not ``practice``/``sealed``, a file that does not exist, a size below 1 or a fraction outside (0, 1) stop the
command with exit 2 and a message naming the argument, before a model or a suite is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)  # progress, warnings and errors
out = Console()  # results

SplitName = Literal["practice", "sealed"]  # = tasks.suite.SPLITS (not imported: `--help` must not load numpy)

SuiteOpt = Annotated[str, typer.Option("--suite", "-s", help="Suite name (built under .logitpred/suites) or folder.")]
SplitOpt = Annotated[SplitName, typer.Option("--split", help="practice (feedback allowed) or sealed (held back).")]


def _splits(values: list[str] | None) -> list[str] | None:
    """Option callback for a repeated ``--split``: each one practice or sealed (exit 2 otherwise)."""
    for v in values or []:
        if v not in ("practice", "sealed"):
            raise typer.BadParameter(f"{v!r} is not one of 'practice', 'sealed'")
    return values


SplitsOpt = Annotated[list[str] | None, typer.Option("--split", callback=_splits, metavar="<practice|sealed>",
                                                     help="Splits to score (repeat; default both).")]
InputFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                           help="Predictions JSONL (one object per prompt, see README).")]


def open_fraction(value: float | None) -> float | None:
    """Option callback: a share strictly between 0 and 1 (exit 2 otherwise)."""
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{value} is not strictly between 0 and 1")
    return value

DeviceOpt = Annotated[Literal["cpu", "cuda", "auto"], typer.Option(
    help="Where the model runs: cpu, cuda (every visible GPU, device_map=auto) or auto (cuda when there is one).")]
DTypeOpt = Annotated[Literal["float32", "bfloat16", "float16"], typer.Option(
    help="Precision of the model's weights; log-softmax is always float32. Part of the truth's identity.")]
OptionsOpt = Annotated[list[str] | None, typer.Option("--option", "-O", help="Predictor option key=value.")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input, the default; 1: the work failed)."""
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


@contextmanager
def progress() -> Iterator[Progress]:
    """A rich progress bar on stderr (description, bar, n/total, elapsed)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        yield bar


def load_suite(name: str) -> Any:
    """A built suite by name or folder; exit 2 naming the build command when it is not built."""
    from tasks import SuiteError
    from tasks import load_suite as load

    try:
        return load(name)
    except SuiteError as e:
        fail(str(e))


def parse_options(options: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}`` with each value parsed as JSON when it is JSON (numbers, booleans, lists)."""
    from tasks.io import DuplicateKeyError, loads_json

    parsed: dict[str, Any] = {}
    for item in options or []:
        if "=" not in item:
            fail(f"option {item!r} must look like key=value")
        k, v = item.split("=", 1)
        if k in parsed:
            fail(f"option {k!r} is given twice: give each option once")
        try:
            parsed[k] = loads_json(v)
        except DuplicateKeyError as e:
            fail(f"option {k!r}: {e}")
        except ValueError:
            parsed[k] = v
    return parsed


def released(split: str, metric: str, estimate: float, low: float, high: float) -> tuple[float, float, float]:
    """What may be shown of a score: exact on practice; on sealed, coarse (holdout hygiene, Blum & Hardt's Ladder)."""
    if split != "sealed":
        return estimate, low, high
    from ..holdout import release_interval, step_for

    return release_interval(estimate, low, high, step_for(metric))
