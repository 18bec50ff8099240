"""``logitpred predict`` (a predictor's predictions to a file) and ``logitpred run`` (predict, validate, score).

On a trajectory suite (``tasks.trajectory.spec``) both answer the split's whole-continuation questions
(``predictors.chain.answer_questions``: the predictor's fast path where it has one, else the chain rule over its
next-token predictions on the step prompts the harness builds): ``predict`` writes them as a trajectory predictions
file (``predictors.trajectory_format``) with its ``.meta.json``; ``run`` scores them in-process through
``evals.trajectory_scoring`` (validated as a file's lines are, the same scoring and run record).
"""

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
GenericOpt = Annotated[bool, typer.Option("--generic", help="Trajectory suites: answer by the generic chain rule over "
                                                            "next-token predictions even where the predictor has a "
                                                            "fast path (same numbers for the n-gram).")]


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


def answer_split(s: Any, split: str, p: Any, ctx: Any, name: str, *, batch_size: int = 64,
                 generic: bool = False) -> tuple[list[Any], dict[str, Any]]:
    """A trajectory suite split's whole-continuation questions answered by ``p`` (``predictors.chain``; ``ctx``: the
    suite's ``PredictorContext``), with a progress bar; returns ``(predictions, record)``, the record saying how they
    were answered (method, questions left to the generic chain rule, notes; notes are also printed). Exit 2 for a
    damaged suite or a helper that cannot run, 1 when the predictor's answers are unusable (``ChainError``)."""
    from predictors.chain import ChainError, answer_questions, split_questions
    from tasks import SuiteError

    try:
        questions = split_questions(s, split)
    except SuiteError as e:
        fail(str(e))
    try:
        with progress() as bar:
            task = bar.add_task(f"{name} on {s.name}/{split} (whole continuations)", total=len(questions))
            answers = answer_questions(p, ctx, questions, batch_size=batch_size, generic=generic,
                                       on_progress=lambda x: bar.advance(task, x))
    except ChainError as e:
        fail(f"{name} on {s.name}/{split}: {e}", code=1)
    except ValueError as e:  # HelperError, TargetError: a helper that cannot be loaded or run here
        fail(f"{name} on {s.name}/{split}: {e}")
    for note in answers.notes:
        console.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)
    return answers.predictions, {"questions": len(questions), "answered_by": answers.method,
                                 "generic_fallbacks": answers.generic, "notes": answers.notes}


def predict_round(s: Any, split: str, t: int, p: Any, name: str, *, batch_size: int) -> list[Any]:
    """The predictor's next-token predictions of round ``t``'s step questions (released to label ``name``: exit 2
    when round t-1 is not scored under it, or the suite has no samples)."""
    from predictors.base import PromptView
    from tasks import SuiteError

    from ..rounds import RoundError
    from ..stepwise import ask_round, release

    try:
        lines = release(s, split, t, name)
    except (SuiteError, RoundError) as e:
        fail(str(e))
    views = [PromptView(q["prompt_id"], q["text"], tuple(q["token_ids"])) for q in lines]
    with progress() as bar:
        task = bar.add_task(f"{name} on {s.name}/{split} (step {t})", total=len(views))
        return ask_round(p, views, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))


def is_trajectory(s: Any) -> bool:
    """Whether ``s`` is a trajectory suite (exit 2 naming the fix for a damaged manifest)."""
    from tasks import SuiteError
    from tasks.trajectory import spec

    try:
        return spec(s) is not None
    except SuiteError as e:
        fail(str(e))


def predict(
    predictor: Annotated[str, typer.Option("--predictor", "-p", help="Registered predictor name.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="Predictions file to write (JSONL).")],
    suite: SuiteOpt = "wiki",
    split: SplitOpt = "practice",
    option: OptionsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per predictor call.")] = 64,
    allow_unapproved: AllowOpt = False,
    generic: GenericOpt = False,
    round_: Annotated[int | None, typer.Option("--round", min=1, help="Trajectory suites: predict the step-wise "
                                               "questions of step T (next-token format); T >= 2 needs round T-1 "
                                               "scored under the predictor's name.")] = None,
) -> None:
    """Run a predictor on a suite split and write its predictions as JSONL (it never sees truth). On a trajectory
    suite: one line per whole-continuation question, log P(continuation | prompt) in nats; with --round T, one
    next-token prediction per step question of step T."""
    from predictors import PredictorContext, write_jsonl
    from tasks.io import atomic_write_json

    from ..scoring import predict_split

    s = load_suite(suite)
    options = parse_options(option)
    ctx = PredictorContext.from_suite(s)
    p, approval = build_predictor(predictor, ctx, options, allow_unapproved)
    meta = {"name": predictor, "options": options, "suite": s.name, "split": split}
    if round_ is not None:
        if not is_trajectory(s):
            fail(f"--round: suite {s.name!r} is a next-token suite; step-wise rounds belong to trajectory suites")
        preds = predict_round(s, split, round_, p, predictor, batch_size=batch_size)
        n = write_jsonl(out_file, preds, vocab=s.vocabulary)
        meta["round"] = round_
    elif is_trajectory(s):
        from predictors.trajectory_format import write_jsonl as write_trajectories

        preds, how = answer_split(s, split, p, ctx, predictor, batch_size=batch_size, generic=generic)
        n = write_trajectories(out_file, preds)
        meta["trajectory"] = how
    else:
        with progress() as bar:
            task = bar.add_task(f"{predictor} on {s.name}/{split}", total=s.manifest["sizes"][split])
            preds = predict_split(s, split, p, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))
        n = write_jsonl(out_file, preds, vocab=s.vocabulary)
    meta = {**meta, **getattr(p, "identity", lambda: {})(), **approval}
    atomic_write_json(Path(str(out_file) + ".meta.json"), meta)
    out.print(f"wrote {n} predictions to {out_file}")


def run(
    suite: SuiteOpt = "wiki",
    predictor: Annotated[list[str] | None, typer.Option("--predictor", "-p", help="Predictors to run (repeat).")] = None,
    split: SplitsOpt = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    allow_unapproved: AllowOpt = False,
) -> None:
    """Run predictors in-process on a built suite, validate and score their predictions, and print the leaderboard
    (a trajectory suite: the whole-continuation scores of each run)."""
    from predictors import PredictorContext
    from tasks import SuiteError

    from ..holdout import HoldoutError
    from ..scoring import ScoringError, predict_validated
    from ..scoring import score as do_score

    s = load_suite(suite)
    ctx = PredictorContext.from_suite(s)
    names, splits = predictor or ["uniform", "unigram"], split or ["practice", "sealed"]
    if is_trajectory(s):
        return run_trajectories(s, ctx, names, splits, seed=seed, allow_unapproved=allow_unapproved)
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


def run_trajectories(s: Any, ctx: Any, names: list[str], splits: list[str], *, seed: int,
                     allow_unapproved: bool) -> None:
    """``run`` on a trajectory suite: per predictor and split, answer the whole-continuation questions in-process,
    score them (``evals.trajectory_scoring.score_trajectory_predictions``: one run record each) and print a table of
    mean absolute log10 error and share within 10x with 95% CIs (sealed: on the holdout grid)."""
    from rich.table import Table

    from tasks import SuiteError
    from tasks.trajectory import spec

    from ..holdout import HoldoutError
    from ..scoring import ScoringError
    from ..trajectory_scoring import score_trajectory_predictions

    steps = bool(spec(s).k)
    table = Table("predictor", "split", "mean |log10 error| [95% CI]", "within 10x [95% CI]",
                  *(["trajectory KL nats [95% CI]"] if steps else []), "scored", "run",
                  title=f"whole continuations{' and step-wise questions' if steps else ''} on {s.name}")
    for name in names:
        p, approval = build_predictor(name, ctx, {}, allow_unapproved)
        for sp in splits:
            preds, how = answer_split(s, sp, p, ctx, name)
            meta = {"name": name, "options": {}, **getattr(p, "identity", lambda: {})(), **approval,
                    "trajectory": how}
            try:
                result = score_trajectory_predictions(s, sp, preds, predictor=meta, seed=seed)
            except (ScoringError, SuiteError, HoldoutError) as e:
                fail(f"{name} on {s.name}/{sp}: {e}", code=1)
            m, summ = result.summary["metrics"]["all"], result.summary
            cells = [released(sp, k, *m[k]) for k in ("mean_abs_log10_error", "within_10x_share")]
            if steps:
                cells.append(released(sp, "trajectory_kl", *run_steps(s, sp, p, ctx, name, meta, seed=seed)))
            table.add_row(name, sp, *(f"{e:.3f} [{lo:.3f}, {hi:.3f}]" for e, lo, hi in cells),
                          f"{summ['n_scored']}/{summ['n_questions']}", str(result.run_dir))
    out.print(table)


def run_steps(s: Any, split: str, p: Any, ctx: Any, name: str, meta: dict[str, Any], *,
              seed: int) -> list[float]:
    """Every step-wise round of ``split`` in-process (``evals.stepwise.run_stepwise``: released one step at a time);
    returns the trajectory KL ``[estimate, low, high]`` (nats). Exit 1 when a round cannot be scored."""
    from tasks import SuiteError
    from tasks.trajectory.steps import step_plan

    from ..holdout import HoldoutError
    from ..rounds import RoundError
    from ..scoring import ScoringError
    from ..stepwise import run_stepwise

    try:
        plan = step_plan(s, split)
        total = sum(len(plan.questions(t)) for t in range(1, plan.rounds + 1))
        with progress() as bar:
            task = bar.add_task(f"{name} on {s.name}/{split} (step-wise)", total=total)
            result = run_stepwise(s, split, p, ctx, predictor_meta={k: v for k, v in meta.items()
                                                                    if k != "trajectory"},
                                  seed=seed, on_progress=lambda n: bar.advance(task, n))
    except (ScoringError, SuiteError, HoldoutError, RoundError) as e:
        fail(f"{name} on {s.name}/{split} (step-wise): {e}", code=1)
    return result.summary["metrics"]["trajectory_kl"]["total"]


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("run")(run)
