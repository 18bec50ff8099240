"""What a version series is measured by: drift between neighbours, the gate per version, the previous version as a
predictor of the next against corpus statistics, and the approval of a version.

- **Drift** ``KL(v[n+1] || v[n])`` per prompt (nats, ``tasks.quantize.row_kl`` over the stored truths), its mean
  with a 95% bootstrap CI (``evals.stats.bootstrap_ci``), its largest value, and the share of prompts where the two
  versions' most likely tokens agree. Truth against truth: no predictor is involved, so both splits are shown exactly.
- **Gate per version**: the gate config's team, rule and thresholds (``evals.gate``'s own functions: member approval
  without opt-in, holdout limits, ``evaluate_suite``) on each series suite seen through the version
  (``tasks.versions.VersionSuite``); thresholds of a gate suite of the same name apply, else the top-level ones,
  on that suite's split (default sealed). A normal gate run record per suite and version under ``results/``.
- **Previous version vs corpus statistics** on v[n+1]: ``version:v[n]`` and the series' baseline (level 0, default
  ``ngram``) predict v[n+1]'s sealed split; both are scored (run records, sealed submissions counted) and compared
  paired (``evals.leaderboard.paired``: mean of baseline - version KL with a bootstrap CI, Wilcoxon p). An
  unapproved ``version:v[n]`` is refused (the refusal is the row) unless the run opts in, then it is marked.
- **Approval** of a version (``approve_version``): the approved team (``evals.gate.team_predictions``: members with
  options, best on practice on the version's practice truth) predicts the version's sealed truth; the bar is
  ``logitpred approve``'s (upper CI bound of mean KL <= 3.0 nats by default); a record keyed by ``version:NAME``'s
  identity is added only if every suite passes.

Sealed numbers are released on the holdout grid (``evals.holdout``) wherever a predictor was scored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tasks.versions import VersionsError

from .. import holdout

PREFIX = "version:"


def drift(prev: Any, nxt: Any, split: str, *, seed: int = 0) -> dict[str, Any]:
    """``KL(nxt || prev)`` of two ``VersionSuite``s of one suite on ``split``: ``{"kl_nats": [mean, low, high],
    "kl_max", "top1_agreement", "n"}`` (nats; 95% percentile bootstrap over prompts)."""
    from tasks.quantize import row_kl

    from ..stats import bootstrap_ci

    _, logp_prev, _ = prev.truth_split(split)
    _, logp_next, _ = nxt.truth_split(split)
    kl = row_kl(logp_next, logp_prev)
    agree = (np.argmax(logp_next, axis=1) == np.argmax(logp_prev, axis=1)).astype(np.float64)
    return {"kl_nats": list(bootstrap_ci(kl, seed=seed)), "kl_max": float(kl.max()),
            "top1_agreement": list(bootstrap_ci(agree, seed=seed)), "n": int(kl.size)}


def gate_specs(cfg: Any, suites: list[str]) -> list[Any]:
    """One ``evals.gate.SuiteSpec`` per series suite: the gate's spec of that name, else the top-level thresholds on
    the sealed split."""
    from ..gate import SuiteSpec

    by_name = {s.name: s for s in cfg.suites}
    return [by_name.get(n) or SuiteSpec(n, "sealed", "version series", cfg.defaults) for n in suites]


def check_team(cfg: Any) -> None:
    """Every gate member known and approved, with no opt-in (``evals.gate``'s rule); ``GateConfigError`` otherwise."""
    from predictors import available
    from predictors.approval import require_approved

    from ..gate import GateConfigError

    known = available()
    for m in cfg.members:
        if m.name not in known:
            raise GateConfigError(f"team.members: unknown predictor {m.name!r}; available: {', '.join(known)}")
        try:
            require_approved(m.name, m.options, opt_in=None)
        except ValueError as e:
            raise GateConfigError(f"team.members: {m.label} is not approved for a gated evaluation: {e}") from e


def gate_version(cfg: Any, vsuites: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict on one version: ``{"verdict": PASS|FAIL|REFUSED, "suites": [...]}`` with, per suite, the
    checks, the team's choice and its KL (released on the grid when sealed), the run id. ``vsuites``: series suite
    name -> ``VersionSuite``."""
    from ..gate import check_holdout, evaluate_suite

    specs = gate_specs(cfg, list(vsuites))
    scfg = dataclasses.replace(cfg, suites=tuple(specs))
    try:
        check_holdout(scfg, vsuites)
    except holdout.HoldoutError as e:
        return {"verdict": "REFUSED", "reason": str(e), "suites": []}
    out = []
    for spec in specs:
        r = evaluate_suite(scfg, spec, vsuites[spec.name])
        r["team_kl_nats"] = _run_metric(r["run_id"], spec.split, "kl_nats", cfg.steps)
        out.append(r)
    return {"verdict": "PASS" if all(r["passed"] for r in out) else "FAIL", "suites": out}


def _run_metric(run_id: str, split: str, metric: str, steps: dict[str, float] | None = None) -> list[float]:
    """A run record's ``metric`` mean ``[est, low, high]``, released on the grid for sealed."""
    from tasks.io import read_json
    from tasks.paths import results_dir

    est, low, high = read_json(results_dir() / run_id / "summary.json")["metrics"][metric]["mean"]
    if split == "sealed":
        est, low, high = holdout.release_interval(est, low, high, holdout.step_for(metric, steps))
    return [est, low, high]


def _score(vsuite: Any, split: str, name: str, options: dict[str, Any], *, allow_unapproved: bool,
           seed: int) -> Any:
    from predictors import PredictorContext, create_with_approval

    from ..scoring import ScoringError, predict_validated, score

    p, meta = create_with_approval(name, PredictorContext.from_suite(vsuite), options,
                                   allow_unapproved=allow_unapproved)
    checked = predict_validated(vsuite, split, p)
    if checked.errors or checked.missing:
        raise ScoringError(f"{name} on {vsuite.name}/{split}: {len(checked.errors)} invalid, {len(checked.missing)} "
                           f"missing; first: {(checked.errors or checked.missing)[0]}")
    ident = getattr(p, "identity", lambda: {})()
    return score(vsuite, split, checked, predictor={"name": name, "options": options, "label": name, **meta,
                                                    "identity": ident}, seed=seed, strict=True)


def compare_previous(prev: str, nxt: Any, baseline: str, *, split: str = "sealed", allow_unapproved: bool = False,
                     seed: int = 0) -> dict[str, Any]:
    """``version:prev`` against ``baseline`` predicting ``nxt`` (a ``VersionSuite``) on ``split``: per predictor its
    KL ``[est, low, high]`` and run id, and ``gain`` = mean of (baseline KL - version KL) per prompt with its CI and
    Wilcoxon p (positive: the previous version predicts better). Released on the grid when sealed. An unapproved
    version without the opt-in gives ``{"refused": reason}``."""
    from predictors.approval import ApprovalError, is_level0

    from ..leaderboard import paired

    if not is_level0(baseline):
        raise VersionsError(f"baseline {baseline!r} is not level 0 (corpus statistics): name one, e.g. ngram")
    name = f"{PREFIX}{prev}"
    try:
        v = _score(nxt, split, name, {}, allow_unapproved=allow_unapproved, seed=seed)
    except ApprovalError as e:
        return {"version": name, "refused": f"{e} (a version is approved by `logitpred versions approve FILE {prev}`)"}
    b = _score(nxt, split, baseline, {}, allow_unapproved=False, seed=seed)
    gain = paired(v.per_prompt, b.per_prompt, seed=seed)
    out: dict[str, Any] = {"version": name, "baseline": baseline, "split": split,
                           "approved": bool(v.summary["predictor"]["approved"])}
    for key, s in (("version_kl", v), ("baseline_kl", b)):
        out[key] = _run_metric(s.summary["run_id"], split, "kl_nats")
        out[key.replace("_kl", "_run")] = s.summary["run_id"]
    g = [gain["delta"], gain["low"], gain["high"]]
    if split == "sealed":
        g = list(holdout.release_interval(*g, holdout.step_for("kl_nats")))
        gain["p"] = max(0.01, holdout.coarse(gain["p"], 0.01, "up"))
    out.update(gain_kl=g, p_wilcoxon=gain["p"], n=gain["n"])
    return out


def team_of(names: list[str], *, seed: int = 0) -> Any:
    """A gate config holding only a team: ``names`` (no options), best on practice; what ``approve_version`` takes
    when no gate config names the approvers."""
    from ..gate import GateConfig, Member

    members = tuple(Member(n) for n in names)
    return GateConfig("approvers", members, "best-on-practice", tuple(1.0 / len(names) for _ in names), (), None, {},
                      5, seed, "")


def approve_version(name: str, vsuites: dict[str, Any], *, team: Any, max_kl: float = 3.0,
                    seed: int = 0) -> dict[str, Any]:
    """Evaluate version ``name`` as a target (its own stored truth on each series suite) with the approved ``team``
    (a ``evals.gate.GateConfig``: members with options, rule; ``team_of`` for plain names), formed by the gate's
    ``team_predictions`` (best on practice: chosen on the version's practice truth, before its sealed truth is read);
    record an approval of ``version:NAME`` (level 1 + the highest member level) if on every suite the upper 95% CI
    bound of the sealed mean KL is <= ``max_kl`` nats. Evidence runs go to ``results/approvals/`` (sealed
    submissions counted). Returns ``{"approved", "key", "level", "suites": [...], "record"}``. Raises
    ``ApprovalError`` for a version not built, ``GateConfigError`` for a member that is not approved; a failed
    evaluation writes nothing to the registry."""
    from predictors import available
    from predictors.approval import (
        ApprovalError,
        ApprovalRecord,
        add_record,
        require_approved,
        system_identity,
    )
    from tasks.paths import results_dir

    from ..gate import team_meta, team_predictions
    from ..scoring import score

    system = f"{PREFIX}{name}"
    if system not in available():
        raise ApprovalError(f"unknown predictor {system!r}: build the series first (`logitpred versions build FILE`)")
    if not team.members:
        raise ApprovalError("name at least one approver")
    ident = system_identity(system, {})
    check_team(team)
    level = 1 + max(int(require_approved(m.name, m.options, opt_in=None)["level"]) for m in team.members)
    outcomes = []
    for vs in vsuites.values():
        preds, decision, _ = team_predictions(team, vs, "sealed")
        result = score(vs, "sealed", preds, predictor={**team_meta(team, decision), "approving": ident["key"]},
                       seed=seed, strict=True, results_root=results_dir() / "approvals")
        est, low, high = result.summary["metrics"]["kl_nats"]["mean"]
        check = {"metric": "kl_nats", "statistic": "mean", "estimate": est, "ci": [low, high], "bound": high,
                 "op": "<=", "threshold": max_kl, "passed": bool(high <= max_kl)}
        outcomes.append({"suite": vs.name, "approver": decision.get("chosen", "mixture"),
                         "practice_kl": decision.get("practice_kl_mean"), "checks": [check],
                         "run_dir": str(result.run_dir)})
    passed = all(o["checks"][0]["passed"] for o in outcomes)
    record = None
    if passed:
        record = add_record(ApprovalRecord(
            key=ident["key"], system={"name": system, "options": {}}, identity=ident, level=level,
            suites=[{"name": vs.name, "version": vs.version, "commitment": vs.commitment} for vs in vsuites.values()],
            thresholds={"kl_nats.mean.max": max_kl},
            scores={o["suite"]: {"approver": o["approver"], "checks": o["checks"]} for o in outcomes},
            evidence=[o["run_dir"] for o in outcomes], approvers=[m.label for m in team.members]))
    return {"approved": passed, "key": ident["key"], "level": level, "suites": outcomes,
            "record": dataclasses.asdict(record) if record else None}
