"""``logitpred rare``: rare behaviours under input distributions (``tasks.rare``): ``rare build`` computes the exact
reference set of a spec (``rare.yaml``), ``rare show`` prints it.

Exit codes: 0 done, 2 bad input (a spec error, an unknown behaviour or distribution, a support too large to enumerate,
a behaviour text that does not tokenize as itself after a prefix), named in the message; a failed build keeps the
previous record.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import DeviceOpt, DTypeOpt, fail, out, progress

rare_app = typer.Typer(help="Rare behaviours: exact reference probabilities, estimators, predictions.",
                       no_args_is_help=True)
SpecOpt = Annotated[Path, typer.Option("--spec", help="Behaviours and input distributions (YAML).")]


def _spec(path: Path):
    from tasks.rare.spec import SpecError, read_spec

    try:
        return read_spec(path)
    except SpecError as e:
        fail(str(e))


def helper_loader(allow_unapproved: bool) -> Any:
    """Loads the helper of a ``helper`` distribution by its predictor name, after the one approval check
    (``predictors.approval.require_approved``); raises ``SpecError`` for a name that is no helper model."""
    def load(name: str) -> tuple[Any, Any, dict[str, str]]:
        from predictors.approval import require_approved
        from predictors.model import MODEL_PREDICTORS, load_helper
        from tasks.rare.spec import SpecError

        if name not in MODEL_PREDICTORS:
            raise SpecError(f"helper {name!r} is not a helper model: use one of {', '.join(sorted(MODEL_PREDICTORS))}")
        require_approved(name, {}, allow_unapproved=allow_unapproved)
        h = load_helper(MODEL_PREDICTORS[name]({}))
        return h.model, h.tokenizer, h.identity

    return load


@rare_app.command("build")
def rare_build(spec: SpecOpt = Path("rare.yaml"), device: DeviceOpt = "cpu", dtype: DTypeOpt = "float32",
               allow_unapproved: Annotated[bool, typer.Option(help="Let an unapproved helper generate the prompts "
                                                                   "of a helper distribution.")] = False) -> None:
    """Enumerate every product distribution's support once and compute P_D(B) exactly for the reference tokens and
    the declared behaviours, at temperature 1 and 0; prints the table and the commitment."""
    from tasks import TargetError, load_target
    from tasks.rare import BehaviourError, DistributionError
    from tasks.rare.reference import build_reference
    from tasks.rare.spec import SpecError

    s = _spec(spec)
    try:
        target = load_target(device=device, dtype=dtype)
    except TargetError as e:
        fail(str(e))
    try:
        with progress() as bar:
            tasks: dict[str, int] = {}

            def advance(did: str, n: int, total: int) -> None:
                if did not in tasks:
                    tasks[did] = bar.add_task(f"enumerating {did}", total=total)
                bar.advance(tasks[did], n)

            rec = build_reference(s, target, on_progress=advance, helpers=helper_loader(allow_unapproved))
    except (SpecError, BehaviourError, DistributionError, ValueError) as e:
        fail(str(e))
    _print(rec, f"reference set of {spec}")


def _print(rec: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table("distribution", "behaviour", "T", "P_D(B)", "log10", title=title)
    for r in rec["rows"]:
        p = r["p_exact"]
        table.add_row(r["distribution"], r["behaviour"], str(r["temperature"]), f"{p:.3e}",
                      f"{math.log10(p):.2f}" if p > 0 else "-inf")
    out.print(table)
    for did, d in rec["distributions"].items():
        sec = rec["seconds"][did]
        if not isinstance(sec, dict):  # a record written before build times covered the text behaviours
            sec = {"marginals": float(sec), "this_build": float("nan")}
        out.print(f"{did}: {d.get('support', 'suite')} inputs, {d['passes']} forward passes "
                  f"({d.get('marginal_passes', d['passes'])} for the next-token marginals); marginals took "
                  f"{sec['marginals']:.1f} s, this build {sec['this_build']:.1f} s")
    out.print(f"commitment {rec['commitment']}")


@rare_app.command("show")
def rare_show(spec: SpecOpt = Path("rare.yaml")) -> None:
    """Print the built reference set of a spec for the default target (exit 2 when it is not built)."""
    from tasks.rare.reference import load_reference
    from tasks.target import load_tokenizer

    s = _spec(spec)
    rec = load_reference(s, load_tokenizer()[1].id)
    if rec is None:
        fail(f"the reference set of {spec} is not built for this target: run `logitpred rare build --spec {spec}`")
    _print(rec, f"reference set of {spec}")


def _reference(spec: Path) -> Any:
    """The built reference record of a spec for the default target (exit 2 naming the build command otherwise, or
    for a sealed suite distribution)."""
    from tasks.rare.questions import check_public
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import SpecError
    from tasks.target import load_tokenizer

    s = _spec(spec)
    try:
        check_public(s)
    except SpecError as e:
        fail(str(e))
    tokenizer, identity = load_tokenizer()
    rec = load_reference(s, identity.id)
    if rec is None:
        fail(f"the reference set of {spec} is not built for this target: run `logitpred rare build --spec {spec}`")
    return rec, tokenizer


@rare_app.command("questions")
def rare_questions(spec: SpecOpt = Path("rare.yaml")) -> None:
    """Print, as JSONL, what a predictor may see: each distribution, its P_D(B) questions, and its P(B | x) questions
    (prompt_id, continuation_id = behaviour, members, token_ids, text). Never a probability of the target."""
    import json
    import sys

    from tasks.rare.questions import questions

    rec, tokenizer = _reference(spec)
    for line in questions(rec, tokenizer):
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


@rare_app.command("predict")
def rare_predict(
    predictor: Annotated[str, typer.Option("--predictor", "-p", help="Registered predictor name.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="Predictions file (JSONL).")],
    spec: SpecOpt = Path("rare.yaml"),
    suite: Annotated[str, typer.Option("--suite", "-s", help="A suite built for the target: the predictor's context "
                                       "(vocabulary, train corpus).")] = "wiki",
    allow_unapproved: Annotated[bool, typer.Option(help="Exploratory: let an unapproved helper run.")] = False,
) -> None:
    """Answer every rare-behaviour question with a predictor (no target access): the chain rule over its next-token
    predictions, summed over a behaviour's members and over a product distribution's support."""
    from predictors import PredictorContext
    from predictors.chain import ChainError
    from predictors.rare import answer_rare
    from predictors.trajectory_format import write_jsonl
    from tasks.io import atomic_write_json
    from tasks.rare.questions import questions

    from .common import load_suite
    from .predict import build_predictor

    rec, tokenizer = _reference(spec)
    s = load_suite(suite)
    if s.target["id"] != rec["target"]["id"]:
        fail(f"suite {suite!r} was built for another target than the reference set")
    ctx = PredictorContext.from_suite(s)
    p, approval = build_predictor(predictor, ctx, {}, allow_unapproved)
    lines = list(questions(rec, tokenizer))
    try:
        with progress() as bar:
            task = bar.add_task(f"{predictor} on rare questions", total=sum("continuation_id" in x for x in lines))
            preds, notes = answer_rare(p, ctx, lines, on_progress=lambda x: bar.advance(task, x))
    except ChainError as e:
        fail(f"{predictor}: {e}", code=1)
    n = write_jsonl(out_file, preds)
    meta = {"name": predictor, "options": {}, **getattr(p, "identity", lambda: {})(), **approval,
            "rare": {"reference": rec["commitment"], "notes": notes}}
    atomic_write_json(Path(str(out_file) + ".meta.json"), meta)
    out.print(f"wrote {n} predictions to {out_file}")


@rare_app.command("score")
def rare_score(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Predictions JSONL.")],
    spec: SpecOpt = Path("rare.yaml"),
    name: Annotated[str | None, typer.Option(help="Predictor label (default: from FILE.meta.json).")] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Validate and score rare-behaviour predictions against the exact reference set, in log space."""
    from rich.table import Table

    from ..rare_scoring import score_rare_file
    from ..scoring import ScoringError
    from .score import read_meta

    rec, _ = _reference(spec)
    meta = dict(read_meta(file) or {"name": file.stem})
    if name:
        meta["label"] = name
    try:
        result = score_rare_file(rec, file, predictor=meta, seed=seed)
    except ScoringError as e:
        fail(str(e), code=1)
    for msg in result.errors[:20]:
        out.print(f"rejected {msg}")
    table = Table("questions", "mean |log10 error| [95% CI]", "within 10x [95% CI]", "calibration slope",
                  title=f"{meta.get('label', meta['name'])}: {result.summary['n_scored']} of "
                        f"{result.summary['n_questions']} rare-behaviour questions scored")
    for group, m in result.summary["metrics"].items():
        table.add_row(group, *(f"{m[k][0]:.3f} [{m[k][1]:.3f}, {m[k][2]:.3f}]" for k in
                               ("mean_abs_log10_error", "within_10x_share")), f"{m['calibration_slope'][0]:.3f}")
    out.print(table)
    out.print(f"run record: {result.run_dir}")


@rare_app.command("estimate")
def rare_estimate(
    distribution: Annotated[str, typer.Option("--distribution", "-d", help="A product distribution of the spec.")],
    behaviour: Annotated[str, typer.Option("--behaviour", "-b", help="A behaviour of the spec, or token:<id>.")],
    estimator: Annotated[str, typer.Option("--estimator", "-e", help="naive, itgis, mhis or gumbel_tail.")] = "itgis",
    budget: Annotated[int, typer.Option(min=1, help="Target passes (forward + backward).")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed of the estimator's draws.")] = 0,
    temperature: Annotated[int, typer.Option(min=0, max=1, help="1: P(B | x); 0: greedy decoding.")] = 1,
    spec: SpecOpt = Path("rare.yaml"),
) -> None:
    """Estimate P_D(B) with an estimator that runs the target, within a budget of target passes; prints the estimate,
    its 95% interval and the passes spent beside the exact value when the reference set has it, and writes a run
    record under results/. An estimate is not a proof: a zero estimate is reported as zero with its budget."""
    import pandas as pd

    from tasks import TargetError, load_target
    from tasks.rare import BehaviourError, BehaviourScorer, DistributionError, ProductDistribution
    from tasks.rare.estimators import estimate
    from tasks.rare.reference import load_reference, make_behaviour, make_distribution
    from tasks.rare.spec import SpecError

    from .. import records

    s = _spec(spec)
    try:
        decl = s.distribution(distribution)
        if decl["kind"] != "product":
            fail(f"distribution {distribution!r} is a {decl['kind']} distribution: estimators take product "
                 "distributions (a suite's mean is exact: `logitpred rare build`)")
        target = load_target()
        dist = make_distribution(decl, target, s.corpus)
        assert isinstance(dist, ProductDistribution)
        if behaviour.startswith("token:"):
            from tasks.rare import from_token

            tok = behaviour.split(":", 1)[1]
            if not tok.isdigit():
                fail(f"behaviour {behaviour!r}: token:<id> needs a numeric token id")
            beh = from_token(behaviour, int(tok), target.vocab_size)
        else:
            decls = {b["id"]: b for b in s.behaviours}
            if behaviour not in decls:
                fail(f"unknown behaviour {behaviour!r}: {spec} declares {sorted(decls)} (or give token:<id>)")
            beh = make_behaviour(decls[behaviour], target, [dist])
        scorer = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=dist.prefix, members=beh.members)
        from .common import console

        with console.status(f"{estimator} on P_{distribution}({behaviour}), budget {budget} passes"):
            est = estimate(estimator, scorer, dist, budget=budget, seed=seed, temperature=temperature)
    except (SpecError, BehaviourError, DistributionError, TargetError, ValueError) as e:
        fail(str(e))
    ref = load_reference(s, target.identity.id)
    exact = next((r["p_exact"] for r in (ref or {}).get("rows", []) if r["distribution"] == distribution
                  and r["behaviour"] == behaviour and r["temperature"] == temperature), None)
    low, high = est.ci if est.ci is not None else (math.nan, math.nan)
    out.print(f"{estimator}: P_{distribution}({behaviour}) at T={temperature} ~ {est.value:.4g} "
              f"(95% interval [{low:.3g}, {high:.3g}]: {est.uncertainty}); {est.passes.total} of {budget} passes, "
              f"seed {seed}" + (" — zero: no sample saw the event" if est.zero else ""))
    if exact is not None:
        err = f"{math.log10(est.value / exact):+.2f} orders of magnitude" if est.value > 0 and exact > 0 else "n/a"
        out.print(f"exact (reference set): {exact:.4g}; error {err}")
    out.print("an estimate is not a proof of a bound: it holds for this distribution and estimator only")
    from datetime import UTC, datetime

    summary = {"run_id": records.new_run_id("rare", distribution, estimator), "questions": "rare-estimate",
               "created": datetime.now(UTC).isoformat(),
               "command": records.command_line(), "spec_sha256": s.sha256(), "target": target.identity.to_dict(),
               "distribution": dist.key(), "behaviour": beh.key(), "estimate": est.to_dict(), "exact": exact,
               "environment": records.environment()}
    run_dir = records.write_run(summary, pd.DataFrame([{"value": est.value, "exact": exact}]))
    out.print(f"run record: {run_dir}")


def register(app: typer.Typer) -> None:
    app.add_typer(rare_app, name="rare")
