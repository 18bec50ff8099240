"""The ``logitpred`` command line: build suites, compute truth, run predictors, score, and rank.

Exit codes: 0 success, 1 the work failed (e.g. nothing valid to score), 2 bad input or configuration.
Heavy libraries (torch, transformers) load only inside the commands that need them, so ``--help`` is fast.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="logitpred: can you predict a language model's next-token distribution without running it?",
                  no_args_is_help=True, pretty_exceptions_enable=False)
suite_app = typer.Typer(help="Build and inspect prompt suites.", no_args_is_help=True)
predictors_app = typer.Typer(help="List and build predictors.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")
app.add_typer(predictors_app, name="predictors")
console = Console(stderr=True)
out = Console()

SuiteOpt = Annotated[str, typer.Option("--suite", "-s", help="Suite name (built under .logitpred/suites) or folder.")]
SplitOpt = Annotated[str, typer.Option("--split", help="practice (feedback allowed) or sealed (held back).")]


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def progress() -> Any:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        yield bar


def _load_suite(name: str) -> Any:
    from tasks import SuiteError, load_suite

    try:
        return load_suite(name)
    except SuiteError as e:
        fail(str(e))


def _parse_options(options: list[str]) -> dict[str, Any]:
    parsed = {}
    for item in options:
        if "=" not in item:
            fail(f"option {item!r} must look like key=value")
        k, v = item.split("=", 1)
        try:
            parsed[k] = json.loads(v)
        except json.JSONDecodeError:
            parsed[k] = v
    return parsed


@suite_app.command("build")
def suite_build(
    name: Annotated[str, typer.Argument(help="Preset (wiki, news, sotu, tiny) or a new name with --corpus.")] = "wiki",
    corpus: Annotated[str | None, typer.Option(help="Corpus: wiki, news, sotu, a .jsonl file or a .txt folder.")] = None,
    target: Annotated[str | None, typer.Option(help="Target model: .gguf file or HF folder (default: SmolLM2).")] = None,
    practice: Annotated[int | None, typer.Option(help="Number of practice prompts.")] = None,
    sealed: Annotated[int | None, typer.Option(help="Number of sealed prompts.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the cut points.")] = None,
    min_context: Annotated[int | None, typer.Option(help="Fewest tokens of context before a cut.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild even if an identical suite exists.")] = False,
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass when computing truth.")] = 8,
) -> None:
    """Cut a held-out prompt suite from a corpus and compute the target's truth for it; prints the sealed commitment."""
    import dataclasses

    from tasks import (
        PRESETS,
        CorpusError,
        SuiteConfig,
        SuiteError,
        TargetError,
        build_suite,
        load_suite,
        load_target,
    )

    base = PRESETS.get(name)
    if base is None and corpus is None:
        fail(f"{name!r} is not a preset ({', '.join(PRESETS)}); give --corpus to build a new suite")
    cfg = base or SuiteConfig(name, corpus or "")
    changes = {k: v for k, v in dict(corpus=corpus, practice=practice, sealed=sealed, seed=seed,
                                        min_context=min_context).items() if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    try:
        with console.status("loading target model"):
            tgt = load_target(target)
        existing = None
        try:
            existing = load_suite(name)
        except SuiteError:
            pass
        if (existing and not rebuild and existing.manifest["config"] == dataclasses.asdict(cfg)
                and existing.target["id"] == tgt.identity.id):
            console.print(f"suite [bold]{name}[/] {existing.version} already built: reusing it (--rebuild to redo)")
            suite = existing
        else:
            with progress() as bar:
                task = bar.add_task(f"cutting prompts from {cfg.corpus}", total=cfg.practice + cfg.sealed)
                suite = build_suite(cfg, tgt.tokenizer, tgt.identity, tgt.vocab_size,
                                    on_progress=lambda n, total: bar.update(task, completed=n))
        _compute_truth(suite, tgt, rebuild=rebuild, batch_size=batch_size)
    except (CorpusError, SuiteError, TargetError) as e:
        fail(str(e))
    out.print(f"suite [bold]{suite.name}[/] version {suite.version}: {suite.manifest['sizes']} prompts, target "
              f"{suite.target['name']} ({suite.target['id']})")
    out.print(f"sealed commitment (publish it): [bold]{suite.commitment}[/]")


def _compute_truth(suite: Any, tgt: Any, *, rebuild: bool, batch_size: int) -> None:
    with progress() as bar:
        tasks = {s: bar.add_task(f"truth {suite.name}/{s}", total=suite.manifest["sizes"][s]) for s in ("practice", "sealed")}
        suite.compute_truth(tgt, rebuild=rebuild, batch_size=batch_size,
                            on_progress=lambda split, n, total: bar.advance(tasks[split], n))


def _released(split: str, metric: str, estimate: float, low: float, high: float) -> tuple[float, float, float]:
    """What may be shown of a score: exact on practice; on sealed, coarse (holdout hygiene, Blum & Hardt's Ladder)."""
    if split != "sealed":
        return estimate, low, high
    from .holdout import release_interval, step_for

    return release_interval(estimate, low, high, step_for(metric))


@suite_app.command("list")
def suite_list() -> None:
    """List built suites with version, sizes, target and whether truth is cached."""
    from tasks.paths import data_dir
    from tasks.suite import load_suite

    table = Table("suite", "version", "corpus", "practice", "sealed", "target", "truth", "commitment")
    for path in sorted((data_dir() / "suites").glob("*/manifest.json")):
        s = load_suite(path.parent)
        table.add_row(s.name, s.version, s.manifest["config"]["corpus"], str(s.manifest["sizes"]["practice"]),
                      str(s.manifest["sizes"]["sealed"]), s.target["name"], "yes" if s.has_truth() else "no",
                      (s.commitment or "-")[:16])
    out.print(table)


@suite_app.command("show")
def suite_show(name: Annotated[str, typer.Argument(help="Suite name or folder.")]) -> None:
    """Print a suite's manifest (config, sizes, target identity, commitment)."""
    out.print_json(json.dumps(_load_suite(name).manifest))


@app.command()
def truth(
    suite: SuiteOpt = "wiki",
    target: Annotated[str | None, typer.Option(help="Target model the suite was built for (default: SmolLM2).")] = None,
    rebuild: Annotated[bool, typer.Option(help="Recompute even if the cache is valid.")] = False,
    verify: Annotated[bool, typer.Option(help="Only check cached truth hashes and the sealed commitment.")] = False,
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass.")] = 8,
) -> None:
    """Compute (or verify) the target's true next-token distributions for a suite, cached and hash-checked."""
    from tasks import SuiteError, TargetError, load_target

    s = _load_suite(suite)
    try:
        if verify:
            s.truth_split("practice")
            s.verify_commitment()
            out.print(f"truth of {s.name} verified; sealed commitment {s.commitment}")
            return
        with console.status("loading target model"):
            tgt = load_target(target)
        _compute_truth(s, tgt, rebuild=rebuild, batch_size=batch_size)
    except (SuiteError, TargetError) as e:
        fail(str(e))
    out.print(f"truth of {s.name} cached in {s.truth_dir}; sealed commitment {s.commitment}")


@app.command()
def predict(
    predictor: Annotated[str, typer.Option("--predictor", "-p", help="Registered predictor name.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Predictions file to write (JSONL).")],
    suite: SuiteOpt = "wiki",
    split: SplitOpt = "practice",
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="Predictor option key=value.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per predictor call.")] = 64,
    allow_unapproved: Annotated[bool, typer.Option(help="Exploratory: let an unapproved helper run; its results are "
                                                        "marked unapproved.")] = False,
) -> None:
    """Run a predictor on a suite split and write its predictions as JSONL (it never sees truth)."""
    from predictors import PredictorContext, create, write_jsonl

    from .scoring import predict_split

    s = _load_suite(suite)
    options = _parse_options(option or [])
    from .cli_helpers import approval_meta

    approval = approval_meta(predictor, options, allow_unapproved)
    try:
        p = create(predictor, PredictorContext.from_suite(s), **options)
    except (KeyError, TypeError, ValueError) as e:
        fail(str(e.args[0] if isinstance(e, KeyError) else e))
    with progress() as bar:
        task = bar.add_task(f"{predictor} on {s.name}/{split}", total=s.manifest["sizes"][split])
        preds = predict_split(s, split, p, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))
    n = write_jsonl(out_file, preds)
    meta = {"name": predictor, "options": options, "suite": s.name, "split": split}
    meta.update(getattr(p, "identity", lambda: {})())
    meta.update(approval)
    Path(str(out_file) + ".meta.json").write_text(json.dumps(meta, indent=2))
    out.print(f"wrote {n} predictions to {out_file}")


@app.command()
def score(
    file: Annotated[Path, typer.Argument(help="Predictions JSONL (one object per prompt, see README).")],
    suite: SuiteOpt = "wiki",
    split: SplitOpt = "practice",
    name: Annotated[str | None, typer.Option(help="Predictor label in results (default: from FILE.meta.json).")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any rejected line or missing prompt.")] = False,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Validate and score a predictions file; writes results/<run-id>/ (per-prompt CSV, summary JSON)."""
    from .holdout import HoldoutError
    from .scoring import ScoringError, load_file
    from .scoring import score as do_score

    s = _load_suite(suite)
    meta_path = Path(str(file) + ".meta.json")
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"name": file.stem}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        fail(f"{meta_path} is not valid JSON ({e}): fix or delete it, and name the predictor with --name")
    if name:
        meta["label"] = name
    try:
        from tasks import SuiteError

        preds = load_file(file, s, split)
        for msg in preds.errors[:20]:
            console.print(f"[yellow]rejected[/] {msg}")
        if len(preds.errors) > 20:
            console.print(f"[yellow]... and {len(preds.errors) - 20} more rejected lines[/]")
        result = do_score(s, split, preds, predictor=meta, strict=strict, seed=seed, source=file)
    except SuiteError as e:
        fail(str(e))
    except (ScoringError, HoldoutError) as e:
        fail(str(e), code=1)
    m = result.summary["metrics"]
    table = Table("metric", "mean [95% CI]", "median", "p90", "max", title=f"{meta.get('label', meta['name'])} on "
                  f"{s.name}/{split}: {result.summary['n_scored']} scored, {len(preds.errors)} rejected, "
                  f"{len(preds.missing)} missing")
    keys = ["kl_nats", "kl_bits", "reverse_kl_nats", "js_bits", "tv", "brier", "top1", "top10_overlap",
            "ce_realized_nats", "target_ce_realized_nats", "target_entropy_nats"]
    if split == "sealed":  # target-side values are functions of the sealed truth alone: not shown
        keys = [k for k in keys if not k.startswith("target_")]
    for key in keys:
        v = m[key]
        mean, med, p90, mx = (_released(split, key, *v[st]) for st in ("mean", "median", "p90", "max"))
        table.add_row(key, f"{mean[0]:.4f} [{mean[1]:.4f}, {mean[2]:.4f}]", f"{med[0]:.4f}", f"{p90[0]:.4f}",
                      f"{mx[0]:.4f}")
    out.print(table)
    if split == "sealed":
        out.print("sealed scores are released on the holdout grid (evals/holdout.py); exact values stay in the record")
    out.print(f"run record: {result.run_dir}")


@app.command()
def run(
    suite: SuiteOpt = "wiki",
    predictor: Annotated[list[str] | None, typer.Option("--predictor", "-p", help="Predictors to run (repeat).")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="Splits to score (repeat).")] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    allow_unapproved: Annotated[bool, typer.Option(help="Exploratory: let unapproved helpers run; their results are "
                                                        "marked unapproved.")] = False,
) -> None:
    """Run predictors in-process on a built suite, validate and score their predictions, and print the leaderboard."""
    from predictors import PredictorContext, create
    from tasks import SuiteError

    from .holdout import HoldoutError
    from .scoring import ScoringError, predict_validated
    from .scoring import score as do_score

    s = _load_suite(suite)
    ctx = PredictorContext.from_suite(s)
    names, splits = predictor or ["uniform", "unigram"], split or ["practice", "sealed"]
    from .cli_helpers import approval_meta

    for name in names:
        approval = approval_meta(name, {}, allow_unapproved)
        try:
            p = create(name, ctx)
        except (KeyError, TypeError, ValueError) as e:
            fail(str(e.args[0] if isinstance(e, KeyError) else e))
        for sp in splits:
            with progress() as bar:
                task = bar.add_task(f"{name} on {s.name}/{sp}", total=s.manifest["sizes"][sp])
                checked = predict_validated(s, sp, p, on_progress=lambda n, t=task: bar.advance(t, n))
            meta = {"name": name, "options": {}, **getattr(p, "identity", lambda: {})(), **approval}
            try:
                result = do_score(s, sp, checked, predictor=meta, seed=seed)
            except (ScoringError, SuiteError, HoldoutError) as e:
                fail(f"{name} on {s.name}/{sp}: {e}", code=1)
            kl = _released(sp, "kl_nats", *result.summary["metrics"]["kl_nats"]["mean"])
            console.print(f"{name} {s.name}/{sp}: mean KL {kl[0]:.3f} nats [{kl[1]:.3f}, {kl[2]:.3f}]"
                          f" ({len(checked.errors)} rejected) -> {result.run_dir}")
    for sp in splits:
        if sp == "sealed" or len(splits) == 1:
            from .cli_eval import leaderboard  # the one leaderboard command

            leaderboard(suite=[suite], split=sp)


# `logitpred leaderboard` itself lives in evals/cli_eval.py (across suites, HTML); `run` calls this short form.
@predictors_app.command("list")
def predictors_list() -> None:
    """List registered predictor names (built-in and from installed plugins)."""
    from predictors import available

    for name in available():
        out.print(name)


# Each area of the harness adds its commands from its own module: ``register(app, suite_app, predictors_app)``.
COMMAND_MODULES: tuple[str, ...] = ("evals.cli_human", "evals.cli_eval", "evals.cli_helpers", "evals.cli_corpus")
for _module in COMMAND_MODULES:
    __import__(_module, fromlist=["register"]).register(app, suite_app, predictors_app)


if __name__ == "__main__":
    app()
