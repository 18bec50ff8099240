"""The pre-deployment gate: did a team of approved predictors predict the target well enough on every configured suite?

``logitpred gate --config gate.yaml`` (see ``docs/gate.md``) loads the config, checks it completely before anything
runs (exit 2 with a message naming the key if not), refuses predictors whose sealed submissions are used up (exit 1),
then for each suite forms the team's prediction, scores it with ``evals.scoring.score`` (a normal run record under
``results/``), and compares each configured metric's confidence bound with its threshold.

The team's prediction is fixed in advance by the declared ``rule``, before any scored truth is read:
- ``best-on-practice`` (default): per suite, every member predicts the suite's *practice* split (whose truth is
  feedback predictors may see anyway); the member with the lowest practice mean KL is the team for that suite and its
  predictions of the gated split are scored. The choice and every member's practice score go into the report.
- ``mixture``: the team predicts ``sum_i w_i q_i``, with the weights declared in the config (default equal).
A threshold ``{max: x}`` passes when the *upper* bound of the statistic's 95% bootstrap CI is <= x, ``{min: x}`` when
the *lower* bound is >= x: the gate passes only what the evidence supports, not what a lucky sample shows. On a
sealed split the numbers are released on the holdout grid (``evals.holdout``: estimate to the nearest step, bounds
rounded outward) and the decision uses the released bounds, so the report and the decision always agree.

Trajectory suites (``evals.gate_trajectory``): a suite entry may name one; it is judged on the trajectory metrics
among the thresholds (mean absolute log10 error of whole continuations, trajectory KL along target samples, ...) and
the team rule applies to it too (best-on-practice by practice mean absolute log10 error; the mixture per step).

Tail risk (``evals.gate_rare``): a ``rare:`` section bounds P_D(B) by the declared estimators (upper 95% bound <=
``max_upper`` per criterion) and the team's rare-behaviour predictions (mean absolute log10 error on the P_D(B)
questions of the spec's reference set, upper CI bound <= ``max_abs_log10_error``).

Left out: gating several targets at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tasks.io import load_yaml

from . import holdout, records
from .gate_trajectory import TRAJECTORY_METRICS, kind_of_metric

RULES = ("best-on-practice", "mixture")
STATISTICS = ("mean", "median", "p90")
DISCLAIMER = ("Passing this gate is one eval among many, not a proof of safety. It shows that the team predicted this "
              "target's next-token distributions on these suites within these thresholds; it says little about other "
              "text distributions, longer continuations, rare outputs or what the model does when deployed.")
DISCLAIMER_TRAJECTORY = (
    "Passing this gate is one eval among many, not a proof of safety. It shows that the team predicted what these "
    "suites asked of this target (next-token distributions; on trajectory suites the probabilities of the "
    "continuations asked and, where gated, the next-token distributions along the target's own samples) within these "
    "thresholds; it says little about other text distributions, continuations not asked, longer ones, rare outputs "
    "or what the model does when deployed.")


class GateConfigError(ValueError):
    """The gate config is invalid; the message names the key and how to fix it (exit code 2)."""


@dataclass(frozen=True)
class Member:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())) + ")"


@dataclass(frozen=True)
class Threshold:
    metric: str
    bound: str  # "max" (upper CI bound <= limit) or "min" (lower CI bound >= limit)
    limit: float
    statistic: str = "mean"


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    split: str
    role: str
    thresholds: tuple[Threshold, ...]  # the top-level ones overridden by the suite's own; by kind: gate_trajectory
    own: tuple[Threshold, ...] = ()  # the suite's own ``thresholds:``


@dataclass(frozen=True)
class GateConfig:
    name: str
    members: tuple[Member, ...]
    rule: str
    weights: tuple[float, ...]
    suites: tuple[SuiteSpec, ...]
    max_submissions: int | None
    steps: dict[str, float]
    worst_prompts: int
    seed: int
    source: str  # the config file's text, hashed into the report
    defaults: tuple[Threshold, ...] = ()  # the top-level ``thresholds:``
    rare: Any = None  # ``evals.gate_rare.RareConfig`` of a ``rare:`` section, or None
    gap: tuple[Any, ...] = ()  # ``evals.gate_gap.GapCriterion`` of a ``gap:`` section

    @property
    def team_label(self) -> str:
        return f"team:{self.name}"


def metric_names() -> list[str]:
    """Every per-prompt column a threshold may name (computed from ``evals.metrics``, not listed by hand)."""
    from .metrics import per_prompt_metrics

    t = np.log(np.full((1, 16), 1 / 16))
    return [*per_prompt_metrics(t, np.exp(t), np.zeros(1, dtype=np.int64)), "p_realized"]


def _keys(obj: dict, where: str, allowed: set[str], required: set[str] = frozenset()) -> None:
    if not isinstance(obj, dict):
        raise GateConfigError(f"{where}: expected a mapping, got {type(obj).__name__}")
    if unknown := set(obj) - allowed:
        raise GateConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if missing := required - set(obj):
        raise GateConfigError(f"{where}: missing key(s) {sorted(missing)}")


def _thresholds(obj: Any, where: str) -> tuple[Threshold, ...]:
    names = [*metric_names(), *TRAJECTORY_METRICS]
    _keys(obj, where, set(names))
    out = []
    for metric, spec in obj.items():
        at = f"{where}.{metric}"
        _keys(spec, at, {"max", "min", "statistic"})
        bounds = [b for b in ("max", "min") if b in spec]
        if len(bounds) != 1:
            raise GateConfigError(f"{at}: give exactly one of max (upper CI bound <= max) or min (lower bound >= min)")
        stat = spec.get("statistic", "mean")
        if stat not in STATISTICS:
            raise GateConfigError(f"{at}.statistic: {stat!r} is not one of {', '.join(STATISTICS)}")
        if stat != "mean" and kind_of_metric(metric) == "trajectory":
            raise GateConfigError(f"{at}.statistic: {metric} is a trajectory metric, itself a mean with a bootstrap "
                                  "CI: only statistic: mean applies (leave the key out)")
        limit = spec[bounds[0]]
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not np.isfinite(limit):
            raise GateConfigError(f"{at}.{bounds[0]}: {limit!r} is not a finite number")
        out.append(Threshold(metric, bounds[0], float(limit), stat))
    return tuple(out)


def load_config(path: Path) -> GateConfig:
    """Parse and check a gate config; every problem raises ``GateConfigError`` naming the key."""
    if not path.is_file():
        raise GateConfigError(f"{path} does not exist (see gate.yaml at the repository root)")
    from tasks.io import DuplicateKeyError, read_text

    try:
        text = read_text(path)  # a UTF-8 byte-order mark is accepted
        raw = load_yaml(text, source=str(path))  # a key given twice is an error, never "the last one wins"
    except UnicodeDecodeError as e:
        raise GateConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from e
    except DuplicateKeyError as e:
        raise GateConfigError(str(e)) from e
    except yaml.YAMLError as e:
        raise GateConfigError(f"{path} is not valid YAML: {e}") from e
    _keys(raw, str(path), {"name", "team", "suites", "thresholds", "holdout", "report", "seed", "rare", "gap"},
          {"name", "team", "suites", "thresholds"})
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise GateConfigError(f"name: {name!r} must be a non-empty string of letters, digits, '_', '.', '-'")
    team = raw["team"]
    _keys(team, "team", {"rule", "members", "weights"}, {"members"})
    rule = team.get("rule", "best-on-practice")
    if rule not in RULES:
        raise GateConfigError(f"team.rule: {rule!r} is not one of {', '.join(RULES)}")
    if not isinstance(team["members"], list) or not team["members"]:
        raise GateConfigError("team.members: list at least one predictor (a name or {name, options})")
    members = []
    for i, m in enumerate(team["members"]):
        if isinstance(m, str):
            m = {"name": m}
        _keys(m, f"team.members[{i}]", {"name", "options"}, {"name"})
        if not isinstance(m.get("options", {}), dict):
            raise GateConfigError(f"team.members[{i}].options: expected a mapping of predictor options")
        members.append(Member(str(m["name"]), dict(m.get("options") or {})))
    if len({m.label for m in members}) != len(members):
        raise GateConfigError("team.members: a member is listed twice")
    weights = team.get("weights")
    if weights is not None and rule != "mixture":
        raise GateConfigError("team.weights: weights apply only to rule: mixture")
    weights = weights if weights is not None else [1.0 / len(members)] * len(members)
    if (not isinstance(weights, list) or len(weights) != len(members)
            or not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights)
            or abs(sum(weights) - 1.0) > 1e-6):
        raise GateConfigError(f"team.weights: give {len(members)} non-negative numbers summing to 1, got {weights!r}")
    default_thresholds = _thresholds(raw["thresholds"], "thresholds")
    if not default_thresholds:
        raise GateConfigError("thresholds: name at least one metric, e.g. kl_nats: {max: 6.0}")
    if not isinstance(raw["suites"], list) or not raw["suites"]:
        raise GateConfigError("suites: list at least one suite, e.g. - {name: wiki, split: sealed}")
    suites = []
    for i, s in enumerate(raw["suites"]):
        if isinstance(s, str):
            s = {"name": s}
        _keys(s, f"suites[{i}]", {"name", "split", "role", "thresholds"}, {"name"})
        split = s.get("split", "sealed")
        if split not in ("practice", "sealed"):
            raise GateConfigError(f"suites[{i}].split: {split!r} is not practice or sealed")
        over = _thresholds(s["thresholds"], f"suites[{i}].thresholds") if "thresholds" in s else ()
        merged = {t.metric: t for t in default_thresholds} | {t.metric: t for t in over}
        suites.append(SuiteSpec(str(s["name"]), split, str(s.get("role", "")), tuple(merged.values()), over))
    hold = raw.get("holdout") or {}
    _keys(hold, "holdout", {"max_submissions", "steps"})
    limit = hold.get("max_submissions")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GateConfigError(f"holdout.max_submissions: {limit!r} must be a whole number >= 1")
    steps = hold.get("steps") or {}
    if not isinstance(steps, dict) or not all(isinstance(v, int | float) and v > 0 for v in steps.values()):
        raise GateConfigError("holdout.steps: a mapping metric -> positive release step, e.g. {kl_nats: 0.05}")
    rep = raw.get("report") or {}
    _keys(rep, "report", {"worst_prompts"})
    worst = rep.get("worst_prompts", 5)
    seed = raw.get("seed", 0)
    for key, v in (("report.worst_prompts", worst), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise GateConfigError(f"{key}: {v!r} must be a whole number >= 0")
    rare = None
    if "rare" in raw:
        from .gate_rare import parse

        rare = parse(raw["rare"], path.resolve().parent)
    from .gate_gap import parse as parse_gap

    gap = parse_gap(raw["gap"], suites) if "gap" in raw else ()
    return GateConfig(name, tuple(members), rule, tuple(float(w) for w in weights), tuple(suites), limit,
                      dict(steps), worst, seed, text, default_thresholds, rare, gap)


def check_environment(cfg: GateConfig) -> dict[str, Any]:
    """Everything that can be checked before running: suites built with truth, members known and approved.

    Returns the loaded suites by name. Raises ``GateConfigError`` (exit 2), also for thresholds that do not fit a
    suite's kind (next-token or trajectory: ``evals.gate_trajectory.check_kinds``).
    """
    from predictors import available
    from predictors.approval import require_approved
    from tasks import SuiteError, load_suite

    suites = {}
    for spec in cfg.suites:
        try:
            suite = load_suite(spec.name)
            if not suite.has_truth():
                raise SuiteError(f"suite {spec.name!r} has no truth yet: run `logitpred truth --suite {spec.name}`")
        except SuiteError as e:
            raise GateConfigError(f"suites: {e}") from e
        suites[spec.name] = suite
    from .gate_trajectory import check_kinds

    check_kinds(cfg, suites)
    known = available()
    for m in cfg.members:
        if m.name not in known:
            raise GateConfigError(f"team.members: unknown predictor {m.name!r}; available: {', '.join(known)}")
        try:  # the one approval check (predictors.approval), with no exploratory opt-in: a gate runs approved only
            require_approved(m.name, m.options, opt_in=None)
        except ValueError as e:  # ApprovalError, or a helper that cannot be identified (HelperError, MappingError)
            raise GateConfigError(f"team.members: {m.label} is not approved for a gated evaluation (a gate has no "
                                  f"exploratory opt-in): {e}") from e
    return suites


def check_holdout(cfg: GateConfig, suites: dict[str, Any]) -> None:
    """Refuse (``holdout.HoldoutError``) before anything runs if the team or a member has used up a sealed split, or
    would pass the limit with the submissions this gate makes (two on a trajectory suite gated on whole continuations
    and on the trajectory KL: ``evals.gate_trajectory.submissions_needed``)."""
    from .gate_gap import needs
    from .gate_trajectory import submissions_needed

    need: dict[tuple[str, str], int] = {}
    for spec in cfg.suites:
        if spec.split == "sealed":
            for label in (cfg.team_label, *(m.label for m in cfg.members)):
                key = (spec.name, label)
                need[key] = need.get(key, 0) + submissions_needed(spec, suites[spec.name], needs(cfg, spec.name))
    for (name, label), n in need.items():
        so_far = holdout.check(suites[name], label, cfg.max_submissions)
        if cfg.max_submissions is not None and so_far + n > cfg.max_submissions:
            raise holdout.HoldoutError(
                f"predictor {label!r} has been scored {so_far} time(s) on the sealed split of suite {name!r} and this "
                f"gate would add {n} sealed submissions there (limit {cfg.max_submissions}): further sealed scores "
                f"would leak the holdout; the ledger is {holdout.ledger_path()}")


def _predict(suite: Any, split: str, member: Member) -> Any:
    from predictors import PredictorContext, create

    from .scoring import ScoringError, predict_validated

    p = create(member.name, PredictorContext.from_suite(suite), **member.options)  # checked again: no opt-in
    checked = predict_validated(suite, split, p)
    if checked.errors or checked.missing:
        raise ScoringError(f"{member.label} on {suite.name}/{split}: {len(checked.errors)} invalid prediction(s), "
                           f"{len(checked.missing)} missing; first: {(checked.errors or checked.missing)[0]}")
    return checked, getattr(p, "identity", lambda: {})()


def team_predictions(cfg: GateConfig, suite: Any, split: str) -> tuple[Any, dict[str, Any], list[Member]]:
    """The team's validated predictions of ``split`` by the declared rule; also what was decided and who was used."""
    from predictors.rows import ValidatedPredictions

    from .scoring import score

    if cfg.rule == "best-on-practice":
        practice = {}
        for m in cfg.members:
            checked, _ = _predict(suite, "practice", m)
            practice[m.label] = score(suite, "practice", checked, predictor={"name": m.label}, seed=cfg.seed,
                                      write=False).summary["metrics"]["kl_nats"]["mean"][0]
        chosen = min(cfg.members, key=lambda m: practice[m.label])  # ties: the first listed
        checked, ident = _predict(suite, split, chosen)
        return checked, {"rule": cfg.rule, "chosen": chosen.label, "practice_kl_mean": practice,
                         "chosen_identity": ident}, [chosen]
    parts = [_predict(suite, split, m)[0] for m in cfg.members]
    probs = sum(w * p.probs for w, p in zip(cfg.weights, parts, strict=True))
    mixed = ValidatedPredictions(parts[0].prompt_ids, probs / probs.sum(axis=1, keepdims=True), [], [])
    return mixed, {"rule": cfg.rule, "weights": dict(zip([m.label for m in cfg.members], cfg.weights, strict=True))}, \
        list(cfg.members)


def _bound(metrics: dict, t: Threshold, step: float | None) -> tuple[float, float, float, float]:
    est, low, high = metrics[t.metric][t.statistic]
    if step is not None:
        est, low, high = holdout.release_interval(est, low, high, step)
    return est, low, high, (high if t.bound == "max" else low)


def team_meta(cfg: GateConfig, decision: dict[str, Any]) -> dict[str, Any]:
    """The team's predictor metadata in its run records. Every member passed the approval check (check_environment,
    and create() again): the team is approved, and each member's record (level, key, reason) is kept."""
    from predictors.approval import require_approved

    members = [{"name": m.name, "options": m.options, **require_approved(m.name, m.options, opt_in=None)}
               for m in cfg.members]
    return {"name": cfg.team_label, "label": cfg.team_label, "gate": cfg.name, "approved": True, "exploratory": False,
            "approval": "every member is level 0 or approved", "members": members, **decision}


def evaluate_suite(cfg: GateConfig, spec: SuiteSpec, suite: Any) -> dict[str, Any]:
    """Run the team on one suite, write its run record, and judge every threshold (of the suite's kind)."""
    from . import gate_trajectory
    from .scoring import score

    if gate_trajectory.is_trajectory(suite):
        return gate_trajectory.evaluate(cfg, spec, suite)
    preds, decision, used = team_predictions(cfg, suite, spec.split)
    meta = team_meta(cfg, decision)
    result = score(suite, spec.split, preds, predictor=meta, seed=cfg.seed, strict=True)
    sealed = spec.split == "sealed"
    counts = {}
    if sealed:  # the team label was counted by ``score``; the members whose predictions were used count too
        counts[cfg.team_label] = result.summary["holdout"]["submission"]
        for m in used:
            # the same team predictions again (an identical re-run) tell nothing new about the members either
            counts[m.label] = holdout.record(suite, m.label, run_id=result.summary["run_id"], via="gate",
                                             digest=result.summary["holdout"]["predictions_sha256"])
    checks = []
    for t in gate_trajectory.thresholds_for(spec, "next-token"):
        step = holdout.step_for(t.metric, cfg.steps) if sealed else None
        est, low, high, bound = _bound(result.summary["metrics"], t, step)
        ok = bound <= t.limit if t.bound == "max" else bound >= t.limit
        checks.append({"metric": t.metric, "statistic": t.statistic, "estimate": est, "ci": [low, high],
                       "compared": "upper CI bound" if t.bound == "max" else "lower CI bound", "bound": bound,
                       "op": "<=" if t.bound == "max" else ">=", "threshold": t.limit, "passed": bool(ok),
                       "step": step})
    prompts = {p.id: p for p in suite.prompts(spec.split)}
    worst_df = result.per_prompt.nlargest(cfg.worst_prompts, "kl_nats")
    kl_step = holdout.step_for("kl_nats", cfg.steps) if sealed else None
    worst = [{"prompt_id": r.prompt_id, "kl_nats": holdout.coarse(r.kl_nats, kl_step) if sealed else r.kl_nats,
              "context_tokens": int(r.context_tokens), "text_end": prompts[r.prompt_id].text[-80:]}
             for r in worst_df.itertuples()]
    return {"suite": suite.name, "kind": "next-token", "version": suite.version, "commitment": suite.commitment, "split": spec.split,
            "role": spec.role or suite.manifest.get("role", ""), "n": result.summary["n_scored"], "run_id": result.summary["run_id"],
            "team": decision, "checks": checks, "passed": all(c["passed"] for c in checks), "worst": worst,
            "submissions": counts, "target": suite.target}


def run_gate(cfg: GateConfig, *, root: Path | None = None) -> dict[str, Any]:
    """Check, refuse or run; returns the report dict (``verdict`` PASS / FAIL / REFUSED) and writes it.

    With a ``rare:`` section (``evals.gate_rare``) its criteria run after the holdout check and before any suite is
    scored (they write nothing, so a criterion an estimator refuses is a config error before anything is written);
    the team's rare-behaviour predictions are scored after the suites."""
    from . import gate_rare

    suites = check_environment(cfg)
    rare = gate_rare.prepare(cfg, suites) if cfg.rare is not None else None
    from . import gate_gap

    gate_gap.check(cfg, suites)
    from .gate_trajectory import is_trajectory

    trajectory = any(is_trajectory(s) for s in suites.values())
    report: dict[str, Any] = {
        "format": "logitpred-gate/1", "gate": cfg.name, "created": datetime.now(UTC).isoformat(),
        "command": records.command_line(), "config_sha256": hashlib.sha256(cfg.source.encode()).hexdigest(),
        "config": load_yaml(cfg.source), "environment": records.environment(),
        "disclaimer": gate_rare.disclaimer(cfg.rare) if rare is not None else DISCLAIMER_TRAJECTORY if trajectory else DISCLAIMER,
        "max_submissions": cfg.max_submissions, "suites": [],
    }
    try:
        check_holdout(cfg, suites)
    except holdout.HoldoutError as e:
        report.update(verdict="REFUSED", reason=str(e))
        return write_report(report, root=root)
    criteria = gate_rare.run_criteria(rare) if rare is not None else []
    for spec in cfg.suites:
        report["suites"].append(evaluate_suite(cfg, spec, suites[spec.name]))
    if rare is not None:
        report["rare"] = gate_rare.section(cfg, rare, criteria)
    if cfg.gap:
        report["gap"] = gate_gap.section(cfg, report["suites"])
    passed = all(s["passed"] for s in report["suites"]) and (rare is None or report["rare"]["passed"]) and \
        report.get("gap", {}).get("passed", True)
    report["verdict"] = "PASS" if passed else "FAIL"
    return write_report(report, root=root)


def write_report(report: dict[str, Any], *, root: Path | None = None) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` under ``results/gates/<stamp>-<gate>/`` (``evals.report``)."""
    from .report import write_gate_report

    return write_gate_report(report, root=root)
