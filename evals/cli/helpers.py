"""CLI commands for helper models and the approval chain: ``helpers train``, ``helpers list``, ``approve``,
``approvals``, ``revoke``.

Exit codes follow ``evals/cli/common.py``: ``approve`` exits 0 when the system is approved, 1 when the evaluation ran and a
threshold failed, 2 on bad input (nothing written to the registry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import console, fail, out, parse_options, progress

helpers_app = typer.Typer(help="Helper models: train the project's own, list the known ones.", no_args_is_help=True)


@helpers_app.command("train")
def helpers_train(
    name: Annotated[str, typer.Option(help="Saved as <data dir>/helpers/NAME; use it as -p tiny-helper -O name=NAME.")]
    = "tiny",
    corpus: Annotated[list[str] | None, typer.Option(help="Train parts of these corpora (repeat).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Windows per step.")] = 8,
    context: Annotated[int, typer.Option(help="Window length in tokens (prompts are truncated to it).")] = 96,
    hidden: Annotated[int, typer.Option(help="Model width.")] = 96,
    layers: Annotated[int, typer.Option(help="Transformer layers.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of initialization and window order.")] = 0,
    target: Annotated[str | None, typer.Option(help="Target whose tokenizer to use (default: SmolLM2).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (the result is reproducible per thread count; "
                                              "on a shared 2-core machine 1 is fastest, see bench/train.py).")] = 1,
    checkpoint_every: Annotated[int, typer.Option(help="Save a checkpoint (a loadable helper folder) every N steps "
                                                       "under <helper>/checkpoints/step-NNNNNN; 0: none.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the helper's latest checkpoint (same "
                                                          "options as the run that wrote it).")] = False,
) -> None:
    """Train a small transformer on the corpora's train parts with the target's tokenizer (CPU, minutes)."""
    from predictors.model import trained_helper_dir
    from predictors.train_helper import TrainConfig, train_helper

    cfg = TrainConfig(corpora=tuple(corpus or TrainConfig.corpora), steps=steps, batch_size=batch_size,
                      context=context, hidden=hidden, layers=layers, heads=max(1, hidden // 32), seed=seed)
    if threads < 1:
        fail(f"--threads must be >= 1 (got {threads})")
    if checkpoint_every < 0:
        fail(f"--checkpoint-every must be >= 0 steps (got {checkpoint_every}; 0 saves no checkpoints)")
    try:
        dest = trained_helper_dir(name)
        with progress() as bar:
            task = bar.add_task(f"training helper {name}", total=steps)
            manifest = train_helper(dest, cfg, target=target, threads=threads, checkpoint_every=checkpoint_every,
                                    resume=resume,
                                    on_step=lambda s, loss: bar.update(task, completed=s,
                                                                       description=f"training {name} loss {loss:.3f}"))
    except (ValueError, OSError) as e:
        fail(str(e))
    out.print(f"helper [bold]{name}[/] saved in {dest}: {manifest['parameters']:,} parameters, "
              f"{manifest['seconds']:.0f} s, final train loss {manifest['final_train_loss']:.3f}, "
              f"validation {manifest['final_valid_loss']:.3f} nats/token")
    out.print(f"training curve: {dest / 'training_curve.png'}")
    if (dest / "checkpoints").is_dir():
        out.print(f"checkpoints: {dest / 'checkpoints'} (each usable as -p model -O path=...)")
    out.print(f"approve it with: logitpred approve tiny-helper -O name={name}")


@helpers_app.command("list")
def helpers_list() -> None:
    """Known helpers (named and trained) with identity and approval status."""
    from rich.table import Table

    from predictors.approval import approval_status
    from predictors.model import HelperError, trained_helper_dir

    table = Table("predictor", "options", "approved", "status")
    rows: list[tuple[str, dict[str, Any]]] = [("gemma3-270m", {})]
    root = trained_helper_dir("x").parent
    rows += [("tiny-helper", {"name": p.name}) for p in sorted(root.glob("*")) if (p / "config.json").is_file()]
    for name, opts in rows:
        try:
            ok, reason = approval_status(name, opts)
        except HelperError as e:
            ok, reason = False, str(e)
        table.add_row(name, json.dumps(opts), "yes" if ok else "no", reason)
    out.print(table)


def approve(
    system: Annotated[str, typer.Argument(help="Predictor to approve: gemma3-270m, tiny-helper, model, composite...")],
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="Its options key=value.")] = None,
    suite: Annotated[list[str] | None, typer.Option("--suite", "-s", help="Suites (repeat; default wiki news sotu).")]
    = None,
    config: Annotated[Path | None, typer.Option(help="Use a gate config's suites and thresholds.")] = None,
    max_kl: Annotated[float | None, typer.Option(help="Threshold: upper CI bound of mean KL (nats) <= this.")] = None,
    approver: Annotated[list[str] | None, typer.Option(help="Approved predictors that predict it (repeat; default: "
                                                            "every level-0 predictor).")] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Evaluate SYSTEM as a target with approved predictors; record an approval if every suite passes."""
    from predictors.approval import ApprovalError
    from predictors.crosstok import MappingError
    from predictors.model import HelperError

    from ..approve import DEFAULT_SUITES, DEFAULT_THRESHOLDS
    from ..approve import approve as do_approve

    options = parse_options(option)
    suites, thresholds = list(suite or []), dict(DEFAULT_THRESHOLDS)
    if config:
        from ..gate import GateConfigError, load_config

        try:
            cfg = load_config(config)
        except GateConfigError as e:
            fail(f"gate config: {e}")
        suites = suites or [s.name for s in cfg.suites]
        thresholds = {t.metric: {t.bound: t.limit, "statistic": t.statistic} for t in cfg.suites[0].thresholds}
    if max_kl is not None:
        thresholds["kl_nats"] = {"max": max_kl}
    try:
        outcome = do_approve(system, options, suites or list(DEFAULT_SUITES), approvers=approver,
                             thresholds=thresholds, seed=seed, on_stage=lambda s: console.print(s))
    except (ApprovalError, HelperError, MappingError, KeyError, TypeError, ValueError) as e:
        fail(f"{e.args[0] if isinstance(e, KeyError) else e}; nothing was written to the approval registry")
    from rich.table import Table

    table = Table("suite", "approver (best on practice)", "metric", "estimate [95% CI]", "bound", "threshold", "pass",
                  title=f"{system} as target (identity {outcome.identity['key']})")
    for s in outcome.suites:
        for c in s.checks:
            table.add_row(s.suite, s.approver, f"{c['metric']} {c['statistic']}",
                          f"{c['estimate']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]", f"{c['bound']:.3f}",
                          f"{c['op']} {c['threshold']}", "yes" if c["passed"] else "NO")
    out.print(table)
    out.print(f"report: {outcome.report}")
    if outcome.approved:
        out.print(f"[bold green]APPROVED[/] {system} at level {outcome.level} (record {outcome.identity['key']})")
        raise typer.Exit(0)
    out.print(f"[bold red]NOT APPROVED[/] {system}: a threshold failed; nothing was written to the registry")
    raise typer.Exit(1)


def approvals(
    all_records: Annotated[bool, typer.Option("--all", help="Include revoked records.")] = False,
) -> None:
    """List approval records: identity, system, level, suites, scores, evidence."""
    from rich.table import Table

    from predictors.approval import ApprovalError, load_records, registry_path

    try:
        recs = load_records()
    except ApprovalError as e:
        fail(str(e))
    table = Table("system", "level", "suites", "scores (sealed)", "approved at", "status",
                  title=f"approvals in {registry_path()}")
    table.add_column("key", no_wrap=True, min_width=16)
    for r in recs:
        if not r.valid and not all_records:
            continue
        scores = "; ".join(f"{s}: {c['metric']} {c['estimate']:.2f} (bound {c['bound']:.2f} {c['op']} "
                           f"{c['threshold']})" for s, v in r.scores.items() for c in v["checks"])
        sysname = r.system["name"] + (f" {json.dumps(r.system['options'])}" if r.system["options"] else "")
        table.add_row(sysname, str(r.level), ", ".join(s["name"] for s in r.suites), scores,
                      r.approved_at[:19], "valid" if r.valid else f"revoked {r.revoked_at[:19]}", r.key)
    out.print(table)


def revoke(
    key: Annotated[str, typer.Argument(help="Record key (or its first 6+ characters) or system name.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the record).")] = "",
) -> None:
    """Revoke an approval: the system is refused in gated evaluations until approved again."""
    from predictors.approval import ApprovalError
    from predictors.approval import revoke as do_revoke

    try:
        hits = do_revoke(key, reason)
    except ApprovalError as e:
        fail(str(e))
    for r in hits:
        out.print(f"revoked {r.key} ({r.system['name']})")


def register(app: typer.Typer) -> None:
    app.add_typer(helpers_app, name="helpers")
    app.command("approve")(approve)
    app.command("approvals")(approvals)
    app.command("revoke")(revoke)
