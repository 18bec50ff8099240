"""``logitpred predict`` (a predictor's predictions to a file) and ``logitpred run`` (predict, validate, score)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    OptionsOpt,
    SplitOpt,
    SplitsOpt,
    SuiteOpt,
    console,
    fail,
    load_suite,
    out,
    parse_options,
    progress,
    released,
)

AllowOpt = Annotated[bool, typer.Option(help="Exploratory: let an unapproved helper run; every result is marked "
                                             "unapproved.")]


def build_predictor(name: str, ctx: Any, options: dict[str, Any], allow_unapproved: bool) -> tuple[Any, dict]:
    """The one approval check (``predictors.create_with_approval``), then the predictor: ``(predictor, approval
    metadata every result carries)``; exit 2 naming the approval command and the opt-in when refused."""
    from predictors import create_with_approval

    try:
        p, approval = create_with_approval(name, ctx, options, allow_unapproved=allow_unapproved)
    except KeyError as e:
        fail(str(e.args[0]))
    except (TypeError, ValueError) as e:  # ApprovalError, HelperError, MappingError, bad options
        fail(str(e))
    if not approval["approved"]:
        console.print(f"[yellow]exploratory run:[/] {approval['approval']}; every result is marked unapproved")
    return p, approval


def predict(
    predictor: Annotated[str, typer.Option("--predictor", "-p", help="Registered predictor name.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="Predictions file to write (JSONL).")],
    suite: SuiteOpt = "wiki",
    split: SplitOpt = "practice",
    option: OptionsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per predictor call.")] = 64,
    allow_unapproved: AllowOpt = False,
) -> None:
    """Run a predictor on a suite split and write its predictions as JSONL (it never sees truth)."""
    from predictors import PredictorContext, write_jsonl
    from tasks.io import atomic_write_json

    from ..scoring import predict_split

    s = load_suite(suite)
    options = parse_options(option)
    p, approval = build_predictor(predictor, PredictorContext.from_suite(s), options, allow_unapproved)
    with progress() as bar:
        task = bar.add_task(f"{predictor} on {s.name}/{split}", total=s.manifest["sizes"][split])
        preds = predict_split(s, split, p, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))
    n = write_jsonl(out_file, preds, vocab=s.vocabulary)
    meta = {"name": predictor, "options": options, "suite": s.name, "split": split,
            **getattr(p, "identity", lambda: {})(), **approval}
    atomic_write_json(Path(str(out_file) + ".meta.json"), meta)
    out.print(f"wrote {n} predictions to {out_file}")


def run(
    suite: SuiteOpt = "wiki",
    predictor: Annotated[list[str] | None, typer.Option("--predictor", "-p", help="Predictors to run (repeat).")] = None,
    split: SplitsOpt = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    allow_unapproved: AllowOpt = False,
) -> None:
    """Run predictors in-process on a built suite, validate and score their predictions, and print the leaderboard."""
    from predictors import PredictorContext
    from tasks import SuiteError

    from ..holdout import HoldoutError
    from ..scoring import ScoringError, predict_validated
    from ..scoring import score as do_score

    s = load_suite(suite)
    ctx = PredictorContext.from_suite(s)
    names, splits = predictor or ["uniform", "unigram"], split or ["practice", "sealed"]
    for name in names:
        p, approval = build_predictor(name, ctx, {}, allow_unapproved)
        for sp in splits:
            with progress() as bar:
                task = bar.add_task(f"{name} on {s.name}/{sp}", total=s.manifest["sizes"][sp])
                checked = predict_validated(s, sp, p, on_progress=lambda n, t=task: bar.advance(t, n))
            meta = {"name": name, "options": {}, **getattr(p, "identity", lambda: {})(), **approval}
            try:
                result = do_score(s, sp, checked, predictor=meta, seed=seed)
            except (ScoringError, SuiteError, HoldoutError) as e:
                fail(f"{name} on {s.name}/{sp}: {e}", code=1)
            kl = released(sp, "kl_nats", *result.summary["metrics"]["kl_nats"]["mean"])
            console.print(f"{name} {s.name}/{sp}: mean KL {kl[0]:.3f} nats [{kl[1]:.3f}, {kl[2]:.3f}]"
                          f" ({len(checked.errors)} rejected) -> {result.run_dir}")
    from .gate import leaderboard  # the one leaderboard command

    for sp in splits:
        if sp == "sealed" or len(splits) == 1:
            leaderboard(suite=[suite], split=sp)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("run")(run)
