"""``logitpred suite build | list | show`` and ``logitpred truth``: prompt suites and the target's truth for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from .common import (
    DeviceOpt,
    DTypeOpt,
    SplitOpt,
    SuiteOpt,
    console,
    fail,
    load_suite,
    open_fraction,
    out,
    progress,
)

BackendOpt = Annotated[Literal["local", "ray"], typer.Option(
    help="Where truth is computed: local (this process) or ray (Ray actors, one model each: $RAY_ADDRESS's cluster, "
         "else a local one; docs/ray.md). Both resume a killed run from its finished shards.")]
WorkersOpt = Annotated[int | None, typer.Option(min=1, help="Ray workers (one model each; default: one per GPU "
                                                "with --device cuda, else the cluster's CPUs).")]

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
    continuation: Annotated[int | None, typer.Option(min=0, help="M: a trajectory suite whose prompts carry "
                                                     "continuations of M target tokens (8 is a good start); 0: "
                                                     "next-token questions only (the default).")] = None,
    samples: Annotated[int | None, typer.Option(min=0, help="K: continuations sampled from the target per prompt "
                                                "(temperature 1, seeded); needs --continuation.")] = None,
    behaviours: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, readable=True,
                                                    help="JSONL of {\"id\", \"text\"}: given continuations applied "
                                                    "to every prompt; needs --continuation.")] = None,
    from_search: Annotated[list[Path] | None, typer.Option(
        "--from-search", exists=True, file_okay=False, help="A `logitpred search` results folder (repeat for "
        "several): build a found suite of the prompts it found (role: shifted; docs/gap.md). --corpus names the "
        "train text (default wiki).")] = None,
    min_plausibility: Annotated[float | None, typer.Option(help="With --from-search: keep found prompts whose "
                                                           "per-token log P_R(x) is at least this (nats; default "
                                                           "-6.0).")] = None,
    ordinary: Annotated[str | None, typer.Option(help="With --from-search: the ordinary suite the predictability "
                                                 "gap compares with (default: the corpus, when it is a preset).")]
    = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild even if an identical suite exists.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per forward pass for truth.")] = 8,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = "float32",
    backend: BackendOpt = "local",
    workers: WorkersOpt = None,
) -> None:
    """Cut a held-out prompt suite from a corpus and compute the target's truth for it; prints the sealed commitment.

    With --continuation M it is a trajectory suite: each prompt also carries continuations (realized, --samples K
    sampled from the target, --behaviours given), and their truth by the chain rule is computed too."""
    import dataclasses

    from tasks import PRESETS, CorpusError, SuiteConfig, SuiteError, TargetError, build_suite, load_target
    from tasks import load_suite as load

    if from_search:
        return _build_found(name, from_search, corpus=corpus, target=target, practice=practice, sealed=sealed,
                            seed=seed, heldout_fraction=heldout_fraction, min_context=min_context,
                            continuation=continuation, samples=samples, behaviours=behaviours,
                            min_plausibility=min_plausibility, ordinary=ordinary, rebuild=rebuild,
                            batch_size=batch_size, device=device, dtype=dtype, backend=backend, workers=workers)
    if min_plausibility is not None or ordinary is not None:
        fail("--min-plausibility and --ordinary apply to found suites only: give --from-search RESULTS")
    base = PRESETS.get(name)
    if base is None and corpus is None:
        fail(f"{name!r} is not a preset ({', '.join(PRESETS)}); give --corpus to build a new suite")
    changes = {k: v for k, v in dict(corpus=corpus, practice=practice, sealed=sealed, seed=seed, min_context=min_context,
                                     heldout_fraction=heldout_fraction, continuation=continuation, samples=samples,
                                     behaviours=str(behaviours.resolve()) if behaviours else None).items()
               if v is not None}
    try:
        cfg = dataclasses.replace(base or SuiteConfig(name, corpus or ""), **changes)
        with console.status("loading target model"):
            tgt = load_target(target, device=device, dtype=dtype)
        existing = None
        try:
            existing = load(name)
        except SuiteError:
            pass
        if (existing and not rebuild and existing.target["id"] == tgt.identity.id
                and {**dataclasses.asdict(SuiteConfig("x", "x")), **existing.manifest["config"]}
                == dataclasses.asdict(cfg)):  # configs written before a field existed have its default
            console.print(f"suite [bold]{name}[/] {existing.version} already built: reusing it (--rebuild to redo)")
            suite = existing
        else:
            with progress() as bar:
                task = bar.add_task(f"cutting prompts from {cfg.corpus}", total=cfg.practice + cfg.sealed)
                suite = build_suite(cfg, tgt.tokenizer, tgt.identity, tgt.vocab_size,
                                    on_progress=lambda n, total: bar.update(task, completed=n))
        compute_truth(suite, tgt, rebuild=rebuild, batch_size=batch_size, backend=backend, workers=workers)
        trajectory = build_trajectories(suite, tgt, rebuild=rebuild, batch_size=batch_size)
    except (CorpusError, SuiteError, TargetError, ValueError) as e:
        fail(str(e))
    out.print(f"suite [bold]{suite.name}[/] version {suite.version}: {suite.manifest['sizes']} prompts, target "
              f"{suite.target['name']} ({suite.target['id']})")
    out.print(f"sealed commitment (publish it): [bold]{suite.commitment}[/]")
    if trajectory:
        out.print(f"trajectory commitment (publish it; covers the sealed continuations and their truth): "
                  f"[bold]{trajectory}[/]")


def _build_found(name: str, folders: list[Path], *, corpus: str | None, target: str | None, practice: int | None,
                 sealed: int | None, seed: int | None, heldout_fraction: float | None, min_context: int | None,
                 continuation: int | None, samples: int | None, behaviours: Path | None,
                 min_plausibility: float | None, ordinary: str | None, rebuild: bool, batch_size: int, device: str,
                 dtype: str, backend: str, workers: int | None) -> None:
    """``suite build NAME --from-search RESULTS...``: a found suite (``tasks.found``), its truth and commitment."""
    from tasks import PRESETS, SuiteError, TargetError, load_target
    from tasks.found import DEFAULT_MIN_PLAUSIBILITY, build_found_suite

    if name in PRESETS:
        fail(f"{name!r} is a preset suite: give the found suite a name of its own (e.g. {name}-found)")
    if behaviours is not None or min_context is not None:
        fail("--behaviours and --min-context do not apply with --from-search: the behaviours and prompts come from "
             "the search")
    if samples and not continuation:
        fail("--samples needs --continuation M (a trajectory found suite)")
    if min_plausibility is not None and min_plausibility != min_plausibility:
        fail("--min-plausibility must be a number (nats per token), e.g. -6")
    defaults = PRESETS["wiki"]
    try:
        with console.status("loading target model"):
            tgt = load_target(target, device=device, dtype=dtype)
        suite = build_found_suite(
            name, folders, tgt.tokenizer, tgt.identity, tgt.vocab_size, corpus=corpus or "wiki",
            seed=defaults.seed if seed is None else seed,
            heldout_fraction=heldout_fraction or defaults.heldout_fraction,
            min_plausibility=DEFAULT_MIN_PLAUSIBILITY if min_plausibility is None else min_plausibility,
            practice=practice, sealed=sealed, continuation=continuation or 0, samples=samples or 0,
            ordinary=ordinary)
        compute_truth(suite, tgt, rebuild=rebuild, batch_size=batch_size, backend=backend, workers=workers)
        trajectory = build_trajectories(suite, tgt, rebuild=rebuild, batch_size=batch_size)
    except (SuiteError, TargetError, ValueError) as e:
        fail(str(e))
    f = suite.manifest["found"]
    out.print(f"found suite [bold]{suite.name}[/] version {suite.version} (role: shifted): {suite.manifest['sizes']} "
              f"prompts from {len(f['runs'])} search run(s), {f['candidates']} passed per-token plausibility >= "
              f"{f['min_plausibility']:g} nats (dropped: {f['dropped']})")
    out.print(f"sealed commitment (publish it): [bold]{suite.commitment}[/]")
    if trajectory:
        out.print(f"trajectory commitment (publish it): [bold]{trajectory}[/]")


def build_trajectories(suite: Any, tgt: Any, *, rebuild: bool, batch_size: int) -> str | None:
    """For a trajectory suite, build (or reuse) its continuation sets and their chain-rule truth with a progress bar;
    return the trajectory commitment (None for a next-token suite)."""
    from tasks.trajectory import build_trajectories as build
    from tasks.trajectory import spec

    if spec(suite) is None:
        return None
    with progress() as bar:
        tasks = {s: bar.add_task(f"continuations {suite.name}/{s}", total=suite.manifest["sizes"][s])
                 for s in ("practice", "sealed")}
        record = build(suite, tgt, rebuild=rebuild, batch_size=batch_size,
                       on_progress=lambda split, n, total: bar.update(tasks[split], completed=n))
    return record["trajectory_commitment"]


def compute_truth(suite: Any, tgt: Any, *, rebuild: bool, batch_size: int, backend: str = "local",
                  workers: int | None = None) -> None:
    """Compute (or reuse) a suite's truth with a progress bar per split, locally or on a Ray cluster."""
    if backend == "local" and workers not in (None, 1):
        fail(f"--workers {workers}: the local backend runs one model in this process; add --backend ray")
    with progress() as bar:
        tasks = {s: bar.add_task(f"truth {suite.name}/{s}", total=suite.manifest["sizes"][s])
                 for s in ("practice", "sealed")}
        suite.compute_truth(tgt, rebuild=rebuild, batch_size=batch_size, backend=backend, workers=workers,
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


@suite_app.command("questions")
def suite_questions(
    name: Annotated[str, typer.Argument(help="Suite name or folder.")],
    split: SplitOpt = "practice",
    round_: Annotated[int | None, typer.Option("--round", min=1, help="Step-wise questions of step T along the "
                                               "target's samples (prompt + the sample's first T-1 tokens), in the "
                                               "next-token format; T >= 2 needs round T-1 of --name scored.")] = None,
    label: Annotated[str | None, typer.Option("--name", help="Who the step-wise round is released to (the label "
                                              "its predictions are scored under); needed for --round >= 2.")] = None,
) -> None:
    """Print, as JSONL, exactly what a predictor may see of a split: one line per prompt (prompt_id, text, token_ids)
    and one per whole-continuation question (prompt_id, continuation_id, kind, text, token_ids of the continuation).
    Sampled continuations are never shown whole; with --round T, the step questions of step T (prompt_id, text,
    token_ids, of_prompt, step), released step by step."""
    import sys

    from tasks import SuiteError
    from tasks.trajectory import questions

    s = load_suite(name)
    try:
        if round_ is None:
            lines = list(questions(s, split))
        else:
            from ..rounds import RoundError
            from ..stepwise import release

            if round_ > 1 and not label:
                fail(f"--round {round_} shows tokens of the samples that round {round_ - 1} asks about: give --name "
                     "LABEL (the label round 1 was scored under)")
            try:
                lines = release(s, split, round_, label or "")
            except RoundError as e:
                fail(str(e))
    except SuiteError as e:
        fail(str(e))
    for line in lines:
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


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
    backend: BackendOpt = "local",
    workers: WorkersOpt = None,
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
        compute_truth(s, tgt, rebuild=rebuild, batch_size=batch_size, backend=backend, workers=workers)
        trajectory = build_trajectories(s, tgt, rebuild=rebuild, batch_size=batch_size)
    except (SuiteError, TargetError, ValueError) as e:
        fail(str(e))
    if trajectory:
        out.print(f"continuations of {s.name} and their truth cached; trajectory commitment {trajectory}")
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
