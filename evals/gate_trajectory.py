"""The gate on trajectory suites: thresholds on whole-continuation errors and on the trajectory KL.

A suite entry of ``gate.yaml`` may name a trajectory suite (``tasks.trajectory.spec``). Its thresholds are trajectory
metrics (``TRAJECTORY_METRICS``), each a mean with a 95% bootstrap CI, compared like next-token ones (``{max: x}``:
upper CI bound <= x; ``{min: x}``: lower bound >= x; sealed: on the holdout release grid):

- ``mean_abs_log10_error``, ``within_10x_share``, ``mean_log10_error``, ``mean_abs_nats_per_token``: the team
  answers every whole-continuation question of the split (``predictors.chain.answer_questions``) and
  ``evals.trajectory_scoring.score_trajectory_predictions`` scores them (a normal run record, ``questions:
  trajectory``; ``metrics["all"]``);
- ``trajectory_kl`` (nats; suites built with samples only): the team answers every step-wise round along the target's
  samples in-process (``evals.stepwise.run_stepwise``: released one step at a time; a run record ``questions:
  trajectory-steps``); the value is ``metrics["trajectory_kl"]["total"]``, the mean over samples of the summed
  per-step KL.

Which thresholds apply (``check_kinds``, before anything runs, exit 2 otherwise): the top-level ``thresholds:`` may
hold metrics of both kinds, and each suite is judged on those of its own kind; a suite's own ``thresholds:`` naming a
metric of the other kind, a top-level metric that no listed suite can use, a suite left with no threshold of its kind,
or ``trajectory_kl`` on a suite without samples is a config error naming the suite, the metric and the fix.

The team, fixed before any scored truth is read:
- ``best-on-practice``: every member answers the *practice* whole-continuation questions; the member with the lowest
  practice mean absolute log10 error is the team for the suite (for both kinds of threshold);
- ``mixture``: the team is the next-token mixture ``q_t = sum_i w_i q_i,t`` at every step (``MixtureTeam``), so its
  answer to a whole continuation is the chain rule over the mixture, ``log Q(y|x) = sum_t log sum_i w_i q_i,t(y_t)``
  (not a mixture of whole-continuation probabilities), and the same team answers the step-wise rounds.

Holdout: on a sealed split each scoring is one submission of the team label (and of the member whose predictions were
used): one for the whole continuations, one for the step-wise attempt; ``submissions_needed`` says how many a suite
entry takes, so the gate refuses before running when they would pass the limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TRAJECTORY_METRICS = ("mean_abs_log10_error", "within_10x_share", "mean_log10_error", "mean_abs_nats_per_token",
                      "trajectory_kl")
STEP_METRIC = "trajectory_kl"
PRACTICE_METRIC = "mean_abs_log10_error"  # what best-on-practice minimizes on a trajectory suite
UNITS = {"mean_abs_log10_error": "orders of magnitude", "mean_log10_error": "orders of magnitude",
         "mean_abs_nats_per_token": "nats/token", "within_10x_share": "share", "trajectory_kl": "nats"}


def kind_of_metric(metric: str) -> str:
    return "trajectory" if metric in TRAJECTORY_METRICS else "next-token"


def is_trajectory(suite: Any) -> bool:
    from tasks.trajectory import spec

    return spec(suite) is not None


def thresholds_for(spec: Any, kind: str) -> list[Any]:
    """The thresholds of a suite entry that apply to a suite of ``kind`` (``next-token`` or ``trajectory``)."""
    return [t for t in spec.thresholds if kind_of_metric(t.metric) == kind]


def stepwise_available() -> bool:
    try:
        from . import stepwise  # noqa: F401
    except ImportError:
        return False
    return True


def _wrong_kind(where: str, suite: str, kind: str, metric: str) -> str:
    from .gate import metric_names

    if kind == "trajectory":
        return (f"{where}: suite {suite!r} is a trajectory suite and {metric} is a next-token metric (a trajectory "
                f"suite asks no plain next-token question); use a trajectory metric: {', '.join(TRAJECTORY_METRICS)}")
    return (f"{where}: suite {suite!r} is a next-token suite and {metric} is a trajectory metric; use a next-token "
            f"metric ({', '.join(metric_names()[:4])}, ...) for it, or list a trajectory suite (built with "
            "`logitpred suite build NAME --continuation M`) for this threshold")


def check_kinds(cfg: Any, suites: dict[str, Any]) -> None:
    """Refuse (``GateConfigError``, exit 2) thresholds that do not fit their suites' kind (module doc)."""
    from tasks.trajectory import asked, spec

    from .gate import GateConfigError

    kinds = {name: "trajectory" if is_trajectory(s) else "next-token" for name, s in suites.items()}
    for i, entry in enumerate(cfg.suites):
        kind = kinds[entry.name]
        for t in entry.own:
            if kind_of_metric(t.metric) != kind:
                raise GateConfigError(_wrong_kind(f"suites[{i}].thresholds.{t.metric}", entry.name, kind, t.metric))
        mine = {t.metric for t in thresholds_for(entry, kind)}
        if not mine:
            example = "mean_abs_log10_error: {max: 1.0}" if kind == "trajectory" else "kl_nats: {max: 3.0}"
            raise GateConfigError(
                f"suites[{i}]: suite {entry.name!r} is a {kind} suite and none of the thresholds given "
                f"({', '.join(t.metric for t in entry.thresholds)}) applies to it; add one of its kind under this "
                f"suite's thresholds: (or the top-level thresholds:), e.g. {example}")
        if kind != "trajectory":
            continue
        sp = spec(suites[entry.name])
        if STEP_METRIC in mine and not sp.k:
            raise GateConfigError(
                f"suites[{i}].thresholds.{STEP_METRIC}: suite {entry.name!r} has no target samples (built without "
                "--samples), and the trajectory KL is measured along them; rebuild it with --samples K, or gate it on "
                f"{PRACTICE_METRIC} only (a suite-level thresholds: mapping)")
        if STEP_METRIC in mine and not stepwise_available():
            raise GateConfigError(f"suites[{i}].thresholds.{STEP_METRIC}: step-wise scoring (evals.stepwise) is not "
                                  "installed in this checkout; gate on whole-continuation metrics only")
        if not asked(suites[entry.name])["whole_continuation"] and (mine - {STEP_METRIC}
                                                                     or cfg.rule == "best-on-practice"):
            raise GateConfigError(f"suites[{i}]: suite {entry.name!r} asks no whole-continuation question, which "
                                  f"{'its thresholds' if mine - {STEP_METRIC} else 'rule best-on-practice'} need")
    for t in cfg.defaults:
        kind = kind_of_metric(t.metric)
        if not any(kinds[e.name] == kind for e in cfg.suites):
            listed = ", ".join(f"{n} ({k})" for n, k in kinds.items())
            raise GateConfigError(
                f"thresholds.{t.metric}: a {kind} metric, but no suite listed is a {kind} suite ({listed}); remove it "
                f"or list a {kind} suite")


def submissions_needed(spec: Any, suite: Any, extra: set[str] = frozenset()) -> int:
    """How many sealed submissions one suite entry adds per label (1 on a next-token suite; on a trajectory suite one
    for the whole continuations and one for the step-wise attempt, each only when a threshold, or a metric of
    ``extra``, the gap criteria's ``evals.gate_gap.needs``, needs it)."""
    if not is_trajectory(suite):
        return 1
    metrics = {t.metric for t in thresholds_for(spec, "trajectory")} | set(extra)
    return int(bool(metrics - {STEP_METRIC})) + int(STEP_METRIC in metrics)


class MixtureTeam:
    """The mixture rule's team as one next-token predictor: per prompt ``sum_i w_i q_i`` of the members' densified
    predictions (validated by ``predictors.format.densify``), renormalized, as a full vector."""

    def __init__(self, name: str, members: list[Any], weights: tuple[float, ...], ctx: Any) -> None:
        self.name, self.members, self.weights, self.ctx = name, members, weights, ctx

    def predict(self, prompts: list[Any]) -> list[Any]:
        from predictors.chain import ChainError
        from predictors.format import Prediction, PredictionError, densify

        parts = [m.predict(prompts) for m in self.members]
        out = []
        for i, v in enumerate(prompts):
            q = np.zeros(self.ctx.vocab_size)
            for w, m, preds in zip(self.weights, self.members, parts, strict=True):
                try:
                    if len(preds) != len(prompts) or preds[i].prompt_id != v.id:
                        raise PredictionError(f"no prediction for {v.id!r} in its place")
                    q += w * densify(preds[i], self.ctx.vocabulary, self.ctx.background)
                except PredictionError as e:
                    raise ChainError(f"mixture member {getattr(m, 'name', m)!r}, prompt {v.id!r}: {e}") from e
            out.append(Prediction(v.id, probs=q / q.sum()))
        return out


def _create(member: Any, ctx: Any) -> Any:
    from predictors import create

    return create(member.name, ctx, **member.options)  # the approval check again, with no opt-in


def team_predictor(cfg: Any, suite: Any, ctx: Any) -> tuple[Any, dict[str, Any], list[Any]]:
    """The team as one predictor by the declared rule (module doc); also what was decided and whose predictions are
    used. ``best-on-practice`` scores every member's practice answers (exact, not recorded)."""
    from predictors.chain import answer_questions, split_questions

    from .trajectory_scoring import score_trajectory_predictions

    if cfg.rule == "mixture":
        team = MixtureTeam(cfg.team_label, [_create(m, ctx) for m in cfg.members], cfg.weights, ctx)
        return team, {"rule": cfg.rule, "weights": dict(zip([m.label for m in cfg.members], cfg.weights,
                                                            strict=True)),
                      "answered_by": "chain rule over the per-step mixture"}, list(cfg.members)
    questions = split_questions(suite, "practice")
    built, practice = {}, {}
    for m in cfg.members:
        built[m.label] = _create(m, ctx)
        preds = answer_questions(built[m.label], ctx, questions).predictions
        practice[m.label] = score_trajectory_predictions(
            suite, "practice", preds, predictor={"name": m.label}, seed=cfg.seed, strict=True,
            write=False).summary["metrics"]["all"][PRACTICE_METRIC][0]
    chosen = min(cfg.members, key=lambda m: practice[m.label])  # ties: the first listed
    p = built[chosen.label]
    return p, {"rule": cfg.rule, "chosen": chosen.label, "practice_metric": PRACTICE_METRIC,
               "practice_scores": practice, "chosen_identity": getattr(p, "identity", lambda: {})()}, [chosen]


def judge(t: Any, triple: list[float], step: float | None) -> dict[str, Any]:
    """One threshold against ``[estimate, low, high]`` (released on the grid when ``step``)."""
    from . import holdout

    est, low, high = (float(x) for x in triple)
    if step is not None:
        est, low, high = holdout.release_interval(est, low, high, step)
    bound = high if t.bound == "max" else low
    ok = bound <= t.limit if t.bound == "max" else bound >= t.limit
    return {"metric": t.metric, "statistic": t.statistic, "kind": "trajectory", "unit": UNITS.get(t.metric, ""),
            "estimate": est, "ci": [low, high], "compared": "upper CI bound" if t.bound == "max" else "lower CI bound",
            "bound": bound, "op": "<=" if t.bound == "max" else ">=", "threshold": t.limit, "passed": bool(ok),
            "step": step}


def _worst(per: Any, questions: list[Any], n: int, step: float | None) -> list[dict[str, Any]]:
    from . import holdout

    by_id = {(q.prompt.id, q.continuation_id): q for q in questions}
    out = []
    for r in per.nlargest(n, "abs_error_log10").itertuples():
        q = by_id[(r.prompt_id, r.continuation_id)]
        err = float(r.abs_error_log10)
        out.append({"prompt_id": r.prompt_id, "continuation_id": r.continuation_id, "kind": r.kind,
                    "n_tokens": int(r.n_tokens), "abs_error_log10": holdout.coarse(err, step) if step else err,
                    "text_end": q.prompt.text[-60:], "continuation": q.text})
    return out


def evaluate(cfg: Any, spec: Any, suite: Any) -> dict[str, Any]:
    """Run the team on one trajectory suite entry, write its run record(s), and judge every threshold (and score
    what the config's ``gap:`` criteria read on this suite, ``evals.gate_gap.needs``)."""
    from predictors import PredictorContext
    from predictors.chain import answer_questions, split_questions
    from tasks.trajectory import load_trajectories

    from . import holdout
    from .gate import team_meta
    from .gate_gap import needs
    from .trajectory_scoring import score_trajectory_predictions

    ctx = PredictorContext.from_suite(suite)
    thresholds = thresholds_for(spec, "trajectory")
    wanted = {t.metric for t in thresholds} | needs(cfg, suite.name)  # what the thresholds and the gap read
    team, decision, used = team_predictor(cfg, suite, ctx)
    meta = team_meta(cfg, decision)
    sealed = spec.split == "sealed"
    values: dict[str, list[float]] = {}
    runs: dict[str, str] = {}
    counts: dict[str, int] = {}
    worst: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    per_step = None

    def count(summary: dict[str, Any]) -> None:  # the team label was counted by the scoring; the members used too
        counts[cfg.team_label] = summary["holdout"]["submission"]
        for m in used:
            counts[m.label] = holdout.record(suite, m.label, run_id=summary["run_id"], via="gate",
                                             digest=summary["holdout"]["predictions_sha256"])

    if wanted - {STEP_METRIC}:
        questions = split_questions(suite, spec.split)
        answers = answer_questions(team, ctx, questions)
        decision["answered_by"] = answers.method
        result = score_trajectory_predictions(suite, spec.split, answers.predictions, predictor=meta, seed=cfg.seed,
                                              strict=True)
        runs["whole_continuations"] = result.summary["run_id"]
        sizes["questions"] = result.summary["n_scored"]
        values.update(result.summary["metrics"]["all"])
        step = holdout.step_for(PRACTICE_METRIC, cfg.steps) if sealed else None
        worst = _worst(result.per_prompt, questions, cfg.worst_prompts, step)
        if sealed:
            count(result.summary)
    if STEP_METRIC in wanted:
        from .stepwise import run_stepwise

        steps = run_stepwise(suite, spec.split, team, ctx, predictor_meta=meta, seed=cfg.seed)
        runs["step_wise"] = steps.summary["run_id"]
        sizes["samples"] = int(steps.summary["n_samples"])
        tkl = steps.summary["metrics"][STEP_METRIC]
        values[STEP_METRIC] = tkl["total"]
        step = holdout.step_for(STEP_METRIC, cfg.steps) if sealed else None
        per_step = [list(holdout.release_interval(*v, step)) if step else v for v in tkl["per_step"]]
        if sealed:
            count(steps.summary)
    checks = [judge(t, values[t.metric], holdout.step_for(t.metric, cfg.steps) if sealed else None)
              for t in thresholds]
    return {"suite": suite.name, "kind": "trajectory", "version": suite.version, "commitment": suite.commitment,
            "trajectory_commitment": load_trajectories(suite).commitment, "split": spec.split,
            "role": spec.role or suite.manifest.get("role", ""),  # a found suite's manifest says shifted
            "n": sizes.get("questions", sizes.get("samples")), "sizes": sizes, "run_id": next(iter(runs.values())),
            "run_ids": runs, "team": decision, "checks": checks, "passed": all(c["passed"] for c in checks),
            "worst": worst, "trajectory_kl_per_step": per_step, "submissions": counts, "target": suite.target}
