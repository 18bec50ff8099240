"""``logitpred search``: find plausible prompts that make a behaviour likely (``tasks.search``, issue 14 parts 1-2).

For each behaviour and each λ of the grid, ``--method`` (gcg, beam, random) maximises
``log P_target(o | prefix + x) + λ · per-token log P_R(x | prefix)`` over ``--free K`` tokens x within ``--budget``
target passes, seeded and resumable: the results folder (``--out``, default ``results/search/<method>-<settings
hash>``) holds

- ``state.json``: the search state, written atomically after every step; running the same command again resumes it
  (a folder holding a search with other settings is refused, exit 2);
- ``frontier.jsonl``: per behaviour, the Pareto frontier of log P(o | x) against per-token log P_R(x) over every prompt
  evaluated; ``best.jsonl``: the best prompt per (behaviour, λ) among every prompt the search evaluated; records as
  ``tasks.search.driver`` describes them (prompt ids and text, λ, method, both objective terms, greedy continuation
  == o, reference and target identity);
- ``frontier.png``: the frontiers, best prompt per λ marked; ``run.json``: versions, seeds, settings and file hashes.

Exit codes: 0 done; 2 bad input, named: a behaviour empty after tokenization, a template longer than the target's
context, a reference model that is neither the target nor an approved helper (``--allow-unapproved`` runs an
unapproved one, every result marked), a budget of zero or below the method's first step, an unknown option.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .common import DeviceOpt, DTypeOpt, OptionsOpt, console, fail, out, parse_options, progress

RUN_FORMAT = "logitpred-search-run/1"


def _lambdas(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--lambda {text!r} is not a comma-separated list of numbers (e.g. 0,0.5,1)")
    if not vals or any(not (math.isfinite(v) and v >= 0) for v in vals):
        fail(f"--lambda {text!r}: give one or more finite numbers >= 0 (e.g. 0,0.5,1)")
    return sorted(set(vals))


def _behaviours(text: str | None, file: Path | None, tokenizer: Any) -> list[Any]:
    from tasks.search import SearchError, behaviour_from_text
    from tasks.trajectory.behaviours import parse_behaviours
    from tasks.truth import SuiteError

    try:
        if text is not None:
            return [behaviour_from_text("behaviour", text, tokenizer)]
        items = parse_behaviours(file.read_bytes(), str(file))
        return [behaviour_from_text(b.id, b.text, tokenizer) for b in items]
    except (SearchError, SuiteError) as e:
        fail(str(e))


def _reference(spec: str, target: Any, template: Any, allow_unapproved: bool) -> tuple[Any, Any]:
    """(R, the target as proposer) for ``--reference`` (exit 2 for anything but ``target`` or an approved helper)."""
    from tasks.search import Reference

    on_target = Reference(target.model, target.tokenizer, target.bos_ids,
                          {"kind": "target", **target.identity.to_dict()}, template, is_target=True,
                          same_tokenizer=True)
    if spec == "target":
        return on_target, on_target
    if not spec.startswith("helper:"):
        fail(f"--reference {spec!r}: use 'target' or 'helper:NAME' (an approved helper model)")
    from predictors.approval import ApprovalError, require_approved
    from predictors.model import MODEL_PREDICTORS, HelperError, load_helper

    name = spec.split(":", 1)[1]
    if name not in MODEL_PREDICTORS:
        fail(f"--reference {spec!r}: {name!r} is not a helper model; use target or helper:NAME with NAME one of "
             f"{', '.join(sorted(MODEL_PREDICTORS))}")
    try:
        approval = require_approved(name, {}, allow_unapproved=allow_unapproved,
                                    opt_in="--allow-unapproved (logitpred search)")
        h = load_helper(MODEL_PREDICTORS[name]({}))
    except (ApprovalError, HelperError) as e:
        fail(f"--reference {spec!r} is neither the target nor an approved helper: {e}")
    ident = {"kind": "helper", **h.identity, "predictor": name, **approval}
    same = h.identity["tokenizer_sha256"] == target.identity.tokenizer_sha256
    is_target = h.identity["weights_sha256"] == target.identity.weights_sha256
    return Reference(h.model, h.tokenizer, h.bos_ids, ident, template, is_target=is_target, same_tokenizer=same), \
        on_target


def plot_frontier(front: list[dict[str, Any]], best: list[dict[str, Any]], title: str) -> bytes:
    """PNG of each behaviour's frontier (log P(o | x) against per-token log P_R(x)), best prompt per λ marked."""
    import matplotlib.pyplot as plt

    from ..plots import _color, png_bytes

    ids = list(dict.fromkeys(r["behaviour"] for r in front))
    fig, axes = plt.subplots(1, max(1, len(ids)), figsize=(5.5 * max(1, len(ids)), 4.5), squeeze=False)
    for ax, bid in zip(axes[0], ids or ["(none)"], strict=False):
        pts = sorted((r for r in front if r["behaviour"] == bid), key=lambda r: r["ref_per_token"])
        ax.step([r["ref_per_token"] for r in pts], [r["log_p"] for r in pts], "-o", where="pre", color=_color(0),
                markersize=4, label="Pareto frontier")
        for i, r in enumerate(r for r in best if r["behaviour"] == bid):
            ax.scatter([r["ref_per_token"]], [r["log_p"]], marker="*", s=120, color=_color(i + 1), zorder=3,
                       edgecolors="black", label=f"best at λ={r['lambda']:g}" + (" (greedy = o)" if
                                                                                r["greedy_is_behaviour"] else ""))
        ax.set_xlabel("per-token log P_R(x | prefix), nats (right: more plausible)")
        ax.set_ylabel("log P_target(o | prefix + x), nats")
        ax.set_title(f"{bid}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def _jsonl(records: list[dict[str, Any]]) -> str:
    import json

    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def search(
    behaviour: Annotated[str | None, typer.Option("--behaviour", "-b", help="The behaviour o: a continuation text.")]
    = None,
    behaviours: Annotated[Path | None, typer.Option("--behaviours", exists=True, dir_okay=False, readable=True,
                                                    help="Behaviour file (JSONL of {id, text}, as suite build's).")]
    = None,
    prefix: Annotated[str, typer.Option(help="Fixed prompt text before the free tokens (may be empty).")] = "",
    free: Annotated[int, typer.Option("--free", "-k", min=1, help="Free tokens the search chooses.")] = 3,
    method: Annotated[Literal["gcg", "beam", "random"], typer.Option(help="Search method.")] = "gcg",
    lambdas: Annotated[str, typer.Option("--lambda", help="Grid of λ >= 0, comma-separated.")] = "0,0.5,1",
    budget: Annotated[int, typer.Option(min=1, help="Target passes (forward + backward) per behaviour and λ.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the initial prompt and of the method's draws.")] = 0,
    reference: Annotated[str, typer.Option(help="Plausibility model R: target, or helper:NAME (approved).")]
    = "target",
    allow_unapproved: Annotated[bool, typer.Option(help="Exploratory: let an unapproved helper be R.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", file_okay=False, help="Results folder (resumed when it "
                                                 "holds this search).")] = None,
    options: OptionsOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DTypeOpt = "float32",
) -> None:
    """Search prompts (fixed prefix + K free tokens) that maximise log P(o | x) + λ · per-token log P_R(x) with GCG,
    BEAST-style beam search or random search, within a budget of target passes; resumable; writes the Pareto
    frontier, the best prompt per λ and a plot."""
    import json
    from datetime import UTC, datetime

    from tasks import TargetError, load_target
    from tasks.io import atomic_write_bytes, atomic_write_json, atomic_write_text
    from tasks.paths import results_dir, sha256_file
    from tasks.search import SearchError, make_template, results, run_search
    from tasks.search.driver import settings
    from tasks.search.state import settings_sha256

    from .. import records

    grid = _lambdas(lambdas)
    if (behaviour is None) == (behaviours is None):
        fail("give exactly one of --behaviour TEXT and --behaviours FILE")
    if reference != "target" and not reference.startswith("helper:"):
        fail(f"--reference {reference!r}: use 'target' or 'helper:NAME' (an approved helper model)")
    opts = parse_options(options)
    try:
        target = load_target(device=device, dtype=dtype)
    except TargetError as e:
        fail(str(e))
    behs = _behaviours(behaviour, behaviours, target.tokenizer)
    try:
        template = make_template(target.tokenizer, prefix, free, bos=target.bos_ids, context=target.context,
                                 longest_member=max(len(m) for b in behs for m in b.behaviour.members),
                                 vocab_size=target.vocab_size)
    except SearchError as e:
        fail(str(e))
    ref, on_target = _reference(reference, target, template, allow_unapproved)
    from tasks.search.methods import check_options, get

    try:
        full_opts = check_options(get(method), opts)
    except ValueError as e:
        fail(str(e))
    cfg = settings(behs, template, method, full_opts, grid, budget, seed, ref, target.identity.id)
    folder = out_dir or results_dir() / "search" / f"{method}-{settings_sha256(cfg)[:12]}"
    state_path = folder / "state.json"
    try:
        with progress() as bar:
            tasks: dict[str, Any] = {}

            def advance(key: str, spent: int, total: int) -> None:
                if key not in tasks:
                    bid, li = key.rsplit("|", 1)
                    tasks[key] = bar.add_task(f"{method} {bid} λ={grid[int(li)]:g}", total=total)
                bar.update(tasks[key], completed=spent)

            state = run_search(target, behs, template, ref, method=method, lambdas=grid, budget=budget, seed=seed,
                               state_path=state_path, options=full_opts, proposer=on_target, on_progress=advance)
    except SearchError as e:
        fail(str(e))
    front, best = results(state)
    atomic_write_text(folder / "frontier.jsonl", _jsonl(front))
    atomic_write_text(folder / "best.jsonl", _jsonl(best))
    atomic_write_bytes(folder / "frontier.png", plot_frontier(
        front, best, f"{method}, R = {ref.identity.get('name', reference)}, budget {budget}, seed {seed}"))
    files = {n: sha256_file(folder / n) for n in ("state.json", "frontier.jsonl", "best.jsonl", "frontier.png")}
    run = {"format": RUN_FORMAT, "created": datetime.now(UTC).isoformat(), "command": records.command_line(),
           "environment": records.environment(), "settings_sha256": state["settings_sha256"], "seed": seed,
           "budget": budget, "method": method, "options": full_opts, "lambdas": grid,
           "target": target.identity.to_dict(), "reference": ref.identity, "device": device, "dtype": dtype,
           "passes": {k: {**r["counters"], "target_total": r["counters_spent"], "steps": r["steps"]}
                      for k, r in state["runs"].items()},
           "files_sha256": files}
    atomic_write_json(folder / "run.json", run)
    from rich.table import Table

    table = Table("behaviour", "λ", "log P(o|x)", "per-token log P_R(x)", "greedy = o", "found at λ", "prompt",
                  title=f"logitpred search: {method}, best prompt per λ")
    for r in best:
        table.add_row(r["behaviour"], f"{r['lambda']:g}", f"{r['log_p']:.3f}", f"{r['ref_per_token']:.3f}",
                      "yes" if r["greedy_is_behaviour"] else "no", f"{r['found_by_lambda']:g}",
                      json.dumps(r["prompt_text"], ensure_ascii=False))
    out.print(table)
    if ref.identity.get("exploratory"):
        console.print("R is an unapproved helper (exploratory): every result is marked unapproved")
    out.print(f"results: {folder}")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
