"""``logitpred suite build | list | show`` and ``logitpred truth``: prompt suites and the target's truth for them."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import DeviceOpt, DTypeOpt, SuiteOpt, console, fail, load_suite, open_fraction, out, progress

suite_app = typer.Typer(help="Build and inspect prompt suites.", no_args_is_help=True)


@suite_app.command("build")
def suite_build(
    name: Annotated[str, typer.Argument(help="Preset (wiki, news, sotu, tiny) or a new name with --corpus.")] = "wiki",
    corpus: Annotated[str | None, typer.Option(help="Corpus: wiki, news, sotu, a .jsonl file or a .txt folder.")] = None,
    target: Annotated[str | None, typer.Option(help="Target model: .gguf file or HF folder (default: SmolLM2).")] = None,
    practice: Annotated[int | None, typer.Option(min=1, help="Number of practice prompts.")] = None,
    sealed: Annotated[int | None, typer.Option(min=1, help="Number of sealed prompts.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the cut points.")] = None,
    heldout_fraction: Annotated[float | None, typer.Option(callback=open_fraction, help="Share of documents held out "
                                                           "for prompts (the rest is train text); default 0.1.")] = None,
    min_context: Annotated[int | None, typer.Option(min=1, help="Fewest tokens of context before a cut.")]
    = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild even if an identical suite exists.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per forward pass for truth.")] = 8,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = "float32",
) -> None:
    """Cut a held-out prompt suite from a corpus and compute the target's truth for it; prints the sealed commitment."""
    import dataclasses

    from tasks import PRESETS, CorpusError, SuiteConfig, SuiteError, TargetError, build_suite, load_target
    from tasks import load_suite as load

    base = PRESETS.get(name)
    if base is None and corpus is None:
        fail(f"{name!r} is not a preset ({', '.join(PRESETS)}); give --corpus to build a new suite")
    changes = {k: v for k, v in dict(corpus=corpus, practice=practice, sealed=sealed, seed=seed, min_context=min_context,
                                     heldout_fraction=heldout_fraction).items() if v is not None}
    try:
        cfg = dataclasses.replace(base or SuiteConfig(name, corpus or ""), **changes)
        with console.status("loading target model"):
            tgt = load_target(target, device=device, dtype=dtype)
        existing = None
        try:
            existing = load(name)
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
        compute_truth(suite, tgt, rebuild=rebuild, batch_size=batch_size)
    except (CorpusError, SuiteError, TargetError) as e:
        fail(str(e))
    out.print(f"suite [bold]{suite.name}[/] version {suite.version}: {suite.manifest['sizes']} prompts, target "
              f"{suite.target['name']} ({suite.target['id']})")
    out.print(f"sealed commitment (publish it): [bold]{suite.commitment}[/]")


def compute_truth(suite: Any, tgt: Any, *, rebuild: bool, batch_size: int) -> None:
    """Compute (or reuse) a suite's truth with a progress bar per split."""
    with progress() as bar:
        tasks = {s: bar.add_task(f"truth {suite.name}/{s}", total=suite.manifest["sizes"][s])
                 for s in ("practice", "sealed")}
        suite.compute_truth(tgt, rebuild=rebuild, batch_size=batch_size,
                            on_progress=lambda split, n, total: bar.advance(tasks[split], n))


@suite_app.command("list")
def suite_list() -> None:
    """List built suites with version, sizes, target and whether truth is cached."""
    from tasks import SuiteError
    from tasks import load_suite as load
    from tasks.paths import data_dir

    table = Table("suite", "version", "corpus", "practice", "sealed", "target", "truth", "commitment")
    for path in sorted((data_dir() / "suites").glob("*/manifest.json")):
        try:
            s = load(path.parent)
        except SuiteError as e:
            console.print(f"[yellow]skipped[/] {path.parent}: {e}")
            continue
        table.add_row(s.name, s.version, s.manifest["config"]["corpus"], str(s.manifest["sizes"]["practice"]),
                      str(s.manifest["sizes"]["sealed"]), s.target["name"], "yes" if s.has_truth() else "no",
                      (s.commitment or "-")[:16])
    out.print(table)


@suite_app.command("show")
def suite_show(name: Annotated[str, typer.Argument(help="Suite name or folder.")]) -> None:
    """Print a suite's manifest (config, sizes, target identity) with its sealed commitment and prompts hash."""
    s = load_suite(name)
    out.print_json(json.dumps({**s.manifest, "commitment": s.commitment,
                               "sealed_prompts_sha256": s.sealed_prompts_sha256}))


def truth(
    suite: SuiteOpt = "wiki",
    target: Annotated[str | None, typer.Option(help="Target model the suite was built for (default: SmolLM2).")] = None,
    rebuild: Annotated[bool, typer.Option(help="Recompute even if the cache is valid.")] = False,
    verify: Annotated[bool, typer.Option(help="Check cached truth hashes and the sealed commitment.")] = False,
    recompute: Annotated[bool, typer.Option(help="With --verify: recompute the truth here (any hardware) and check "
                                            "it against the committed truth within the documented tolerance.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per forward pass.")] = 8,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = "float32",
) -> None:
    """Compute (or verify) the target's true next-token distributions for a suite, cached and hash-checked.

    Exit status: 0 done or verified, 1 a recomputation does not verify against the commitment, 2 bad input."""
    from tasks import SuiteError, TargetError, load_target

    if recompute and not verify:
        fail("--recompute checks a recomputation against the committed truth: give it with --verify")
    s = load_suite(suite)
    try:
        if verify and not recompute:
            s.truth_split("practice")
            s.verify_commitment()
            out.print(f"truth of {s.name} verified; sealed commitment {s.commitment}")
            return
        with console.status("loading target model"):
            tgt = load_target(target, device=device, dtype=dtype)
        if recompute:
            verify_recomputed(s, tgt, batch_size=batch_size)
            return
        compute_truth(s, tgt, rebuild=rebuild, batch_size=batch_size)
    except (SuiteError, TargetError) as e:
        fail(str(e))
    out.print(f"truth of {s.name} cached in {s.truth_dir} ({tgt.placement['dtype']} on {tgt.placement['device']}, "
              f"stored float16); sealed commitment {s.commitment}")


def verify_recomputed(s: Any, tgt: Any, *, batch_size: int) -> None:
    """Recompute a suite's truth here and compare it with the committed truth; print per split; exit 1 on failure."""
    with progress() as bar:
        tasks = {sp: bar.add_task(f"recompute {s.name}/{sp}", total=s.manifest["sizes"][sp])
                 for sp in ("practice", "sealed")}
        report = s.verify_recomputed(tgt, batch_size=batch_size,
                                     on_progress=lambda split, n, total: bar.advance(tasks[split], n))
    for split, r in report["splits"].items():
        out.print(f"{split}: KL(recomputed || stored) mean {r['kl_mean']:.2e}, max {r['kl_max']:.2e} nats "
                  f"(prompt {r['worst_prompt']}); {r['rows_over']} rows over the tolerance {report['tolerance']:g}")
    where = f"{report['placement']['dtype']} on {report['placement']['device']}"
    if not report["ok"]:
        console.print(f"[red]truth of {s.name} recomputed here ({where}) does NOT verify against the sealed "
                      f"commitment {s.commitment}[/]")
        raise typer.Exit(1)
    out.print(f"truth of {s.name} recomputed here ({where}) verifies against the sealed commitment {s.commitment}")


def register(app: typer.Typer) -> None:
    app.add_typer(suite_app, name="suite")
    app.command("truth")(truth)
