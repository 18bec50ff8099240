"""The approval chain: evaluate a helper (or composite) *as a target*, with already-approved predictors predicting it.

``approve(name, options, suites)``:
1. Check everything before computing anything (nothing is written to the registry on bad input): the system is not
   level 0, it can be identified (a helper path exists and is a model), every suite is built with truth and matches
   its published commitment, every approver is itself approved.
2. Truth for the system on each suite: its own predictions on every prompt of both splits -- exactly the output a
   gated evaluation would use. A helper with another tokenizer is therefore scored as a target *through the mapping*
   (its distribution mapped onto the target's vocabulary by ``predictors.crosstok``): the prompts were cut with the
   target's tokenizer, the approved predictors speak the target's vocabulary, and what we must know is whether the
   helper's contribution to a prediction of the target can itself be predicted. Re-tokenizing prompts for the
   helper's own vocabulary would approve a different object than the one used.
3. The approved predictors predict it, with the system's practice outputs as their practice feedback (fitted
   mixtures refit on them). As in the gate's ``best-on-practice`` rule, the approver with the lowest practice mean KL
   is chosen per suite, then scored on the sealed split against the system's sealed outputs.
4. Thresholds (default: upper 95% CI bound of sealed mean KL <= 3.0 nats, on every suite; or a gate config's) decide.
   A record (identity, level = 1 + the highest approver level, suites, thresholds, scores, evidence) is added only
   if every suite passes. Evidence runs go to ``results/approvals/`` (not the suite leaderboards), with a report.

Left out: approving against truth the system did not produce itself (e.g. sampled continuations).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from predictors.approval import (
    ApprovalError,
    ApprovalRecord,
    add_record,
    is_level0,
    require_approved,
    system_identity,
)
from tasks.io import atomic_write_text
from tasks.paths import results_dir

from . import records

DEFAULT_SUITES = ("wiki", "news", "sotu")
# The bar a helper must clear, on every suite: the best corpus statistics reach about 3 nats on the target itself
# (issue 4); a helper no easier to predict than that adds what nobody can check.
DEFAULT_THRESHOLDS = {"kl_nats": {"max": 3.0}}


@dataclass
class SuiteOutcome:
    suite: str
    approver: str
    practice_kl: dict[str, float]  # every approver's practice mean KL
    metrics: dict[str, Any]  # sealed: metric -> statistic -> [est, low, high]
    checks: list[dict[str, Any]]
    run_dir: str

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)


@dataclass
class Outcome:
    name: str
    options: dict[str, Any]
    identity: dict[str, Any]
    level: int
    suites: list[SuiteOutcome] = field(default_factory=list)
    record: ApprovalRecord | None = None
    report: str = ""

    @property
    def approved(self) -> bool:
        return bool(self.suites) and all(s.passed for s in self.suites)


def parse_thresholds(obj: dict[str, Any]) -> tuple[Any, ...]:
    """Thresholds in the gate's format ``{metric: {max|min: x, statistic: mean}}`` (validated by the gate's parser)."""
    from .gate import GateConfigError, _thresholds

    try:
        return _thresholds(obj, "thresholds")
    except GateConfigError as e:
        raise ApprovalError(str(e)) from e


def approver_spec(approver: str) -> tuple[str, dict[str, Any]]:
    """An approver given as a predictor name or as ``name:{json options}`` (``model:{"path": "..."}``): (name, options)."""
    from predictors.composite import parse_member

    _, sep, rest = approver.partition(":")
    return parse_member(approver) if sep and rest.lstrip().startswith("{") else (approver, {})


def _approver_level(name: str) -> int:
    """An approver's level (0, or its record's); ``ApprovalError`` if it is not approved (approvers have no opt-in)."""
    try:
        return int(require_approved(*approver_spec(name), opt_in=None)["level"])
    except ApprovalError as e:
        raise ApprovalError(f"approver {name!r} is not approved itself: {e}") from e


def _check_suites(names: Sequence[str]) -> list[Any]:
    from tasks import SuiteError, load_suite

    suites = []
    for n in names:
        try:
            s = load_suite(n)
        except SuiteError as e:
            raise ApprovalError(str(e)) from e
        if not s.has_truth():
            raise ApprovalError(f"suite {n!r} has no truth yet, so its prompts are not fixed by a commitment: run "
                                f"`logitpred truth --suite {n}` (or `logitpred suite build {n}`) first")
        try:
            s.verify_commitment()
        except SuiteError as e:
            raise ApprovalError(str(e)) from e
        suites.append(s)
    return suites


def _dense(suite: Any, split: str, predictor: Any) -> np.ndarray:
    from .scoring import predict_validated

    checked = predict_validated(suite, split, predictor)
    if checked.errors or checked.missing:
        raise ApprovalError(f"{predictor.name} on {suite.name}/{split}: {len(checked.errors)} invalid and "
                            f"{len(checked.missing)} missing predictions; first: {(checked.errors or checked.missing)[0]}")
    return checked.probs


def system_truth(suite: Any, name: str, options: dict[str, Any]) -> dict[str, np.ndarray]:
    """The system's own output on both splits, as log-probabilities: its truth when it is the target."""
    from predictors import PredictorContext, create

    # The candidate is evaluated AS A TARGET: it is unapproved until this evaluation records otherwise, so it is built
    # with the explicit opt-in (its outputs become the truth here; nothing it produces is scored as a prediction).
    system = create(name, PredictorContext.from_suite(suite), allow_unapproved=True, **options)
    return {split: np.log(_dense(suite, split, system)) for split in ("practice", "sealed")}


def evaluate_suite(suite: Any, key: str, truth: dict[str, np.ndarray], approvers: Sequence[str],
                   thresholds: Sequence[Any], *, seed: int = 0, root: Path | None = None) -> SuiteOutcome:
    """Approvers predict the system on one suite; the best on practice is scored on sealed and judged."""
    from predictors import PredictorContext, create_with_approval

    from .scoring import score_matrix
    from .stats import summarize

    ctx = PredictorContext.from_suite(suite)
    ids = [p.id for p in suite.prompts("practice")]
    # The approvers' practice feedback is the system's practice output; the target's truth is not involved.
    ctx = dataclasses.replace(ctx, practice_truth=lambda: (list(ids), truth["practice"].astype(np.float32)),
                              extra={**ctx.extra, "approving": key})
    nxt = {s: np.array([p.next_token_id for p in suite.prompts(s)]) for s in ("practice", "sealed")}
    practice, built, approval = {}, {}, {}
    for a in approvers:
        built[a], approval[a] = create_with_approval(approver_spec(a)[0], ctx, approver_spec(a)[1])  # no opt-in
        q = _dense(suite, "practice", built[a])
        practice[a] = float(score_matrix(truth["practice"], q, nxt["practice"])["kl_nats"].mean())
    chosen = min(approvers, key=lambda a: practice[a])  # ties: the first listed
    q = _dense(suite, "sealed", built[chosen])
    per_prompt = score_matrix(truth["sealed"], q, nxt["sealed"])
    per_prompt["p_realized"] = np.exp(-per_prompt["ce_realized_nats"])
    metrics = summarize({c: per_prompt[c].to_numpy() for c in per_prompt.columns}, seed=seed)
    checks = []
    for t in thresholds:
        est, low, high = metrics[t.metric][t.statistic]
        bound = high if t.bound == "max" else low
        ok = bound <= t.limit if t.bound == "max" else bound >= t.limit
        checks.append({"metric": t.metric, "statistic": t.statistic, "estimate": est, "ci": [low, high],
                       "bound": bound, "op": "<=" if t.bound == "max" else ">=", "threshold": t.limit,
                       "passed": bool(ok)})
    per_prompt.insert(0, "prompt_id", [p.id for p in suite.prompts("sealed")])
    summary = {
        "run_id": records.new_run_id(suite.name, "sealed", f"approve-{key}-{chosen}"),
        "created": datetime.now(UTC).isoformat(), "command": records.command_line(),
        "suite": {"name": suite.name, "version": suite.version, "commitment": suite.commitment,
                  "config": suite.manifest["config"]},
        "split": "sealed", "target": {"system_as_target": key, "suite_target": suite.target},
        "predictor": {"name": chosen, **getattr(built[chosen], "identity", lambda: {})(), **approval[chosen]},
        "approval_practice_kl": practice, "n_prompts": len(per_prompt), "n_scored": len(per_prompt), "seed": seed,
        "environment": records.environment(), "metrics": metrics, "checks": checks,
    }
    run_dir = records.write_run(summary, per_prompt, root=root or results_dir() / "approvals")
    return SuiteOutcome(suite.name, chosen, practice, metrics, checks, str(run_dir))


def approve(name: str, options: dict[str, Any] | None = None, suites: Sequence[str] = DEFAULT_SUITES, *,
            approvers: Sequence[str] | None = None, thresholds: dict[str, Any] | Sequence[Any] | None = None,
            seed: int = 0, root: Path | None = None,
            on_stage: Callable[[str], None] | None = None) -> Outcome:
    """Evaluate ``name``/``options`` as a target; add an approval record if every suite passes."""
    from predictors import available

    options = dict(options or {})
    say = on_stage or (lambda s: None)
    if is_level0(name, options):
        raise ApprovalError(f"{name!r} is level 0 (approved by definition): there is nothing to approve")
    if not suites:
        raise ApprovalError("name at least one suite to approve on, e.g. --suite wiki")
    ths = parse_thresholds(thresholds or DEFAULT_THRESHOLDS) if isinstance(thresholds, dict | None) else tuple(thresholds)
    if not ths:
        raise ApprovalError("no thresholds: an approval needs at least one, e.g. kl_nats: {max: 3.0}")
    ident = system_identity(name, options)  # raises a clear error for a bad helper path
    built_suites = _check_suites(suites)
    known = available()
    if name not in known:
        raise ApprovalError(f"unknown predictor {name!r}; available: {', '.join(known)}")
    approvers = list(approvers) if approvers else [n for n in known if is_level0(n)]
    for a in approvers:
        if approver_spec(a)[0] not in known:
            raise ApprovalError(f"unknown approver {a!r}; available: {', '.join(known)}")
    level = 1 + max(_approver_level(a) for a in approvers)
    outcome = Outcome(name, options, ident, level)
    for s in built_suites:
        say(f"{name} as target on {s.name}: computing its outputs")
        truth = system_truth(s, name, options)
        say(f"{name} as target on {s.name}: approved predictors predict it")
        outcome.suites.append(evaluate_suite(s, ident["key"], truth, approvers, ths, seed=seed, root=root))
    thr = {f"{t.metric}.{t.statistic}.{t.bound}": t.limit for t in ths}
    if outcome.approved:
        outcome.record = add_record(ApprovalRecord(
            key=ident["key"], system={"name": name, "options": options}, identity=ident, level=level,
            suites=[{"name": s.name, "version": s.version, "commitment": s.commitment} for s in built_suites],
            thresholds=thr, scores={o.suite: {"approver": o.approver, "checks": o.checks} for o in outcome.suites},
            evidence=[o.run_dir for o in outcome.suites], approvers=list(approvers)))
    outcome.report = _write_report(outcome, thr, root)
    return outcome


def _write_report(o: Outcome, thresholds: dict[str, float], root: Path | None) -> str:
    out = (root or results_dir() / "approvals")
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = out / f"{stamp}-{o.identity['key']}.json"
    atomic_write_text(path, json.dumps({
        "format": "logitpred-approval-report/1", "system": {"name": o.name, "options": o.options},
        "identity": o.identity, "approved": o.approved, "level": o.level, "thresholds": thresholds,
        "suites": [dataclasses.asdict(s) | {"passed": s.passed} for s in o.suites],
        "record": dataclasses.asdict(o.record) if o.record else None,
    }, indent=2, default=str))
    return str(path)
