"""The gate on a trajectory suite (issue 12 part 8): PASS and FAIL on whole-continuation errors and the trajectory KL,
each value against a direct recomputation (the target's chain-rule truth and its stored step distributions against
the team's own answers), the team rules, config errors of the wrong kind (exit 2), the sealed submission limit (two
submissions per gated trajectory suite) and no sealed truth value in the report. Real SmolLM2, real wiki text: a
trajectory suite of 3 + 3 prompts (M = 3, K = 2), one without samples, and a next-token suite beside them."""

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evals import holdout
from evals.cli import app
from evals.stats import bootstrap_ci
from evals.trajectory_metrics import aggregate
from tests.evals.leaks import numbers_in

runner = CliRunner()
LN10 = math.log(10)


@pytest.fixture(scope="module")
def home(target, tmp_path_factory):
    """``tgate`` (trajectory: M = 3, K = 2), ``tgate0`` (trajectory, no samples) and ``tgatent`` (next-token), each
    3 + 3 wiki prompts of the tiny preset, with truth, built once for this module."""
    from tasks import PRESETS, build_suite
    from tasks.trajectory import build_trajectories

    path = tmp_path_factory.mktemp("tgate-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOGITPRED_HOME", str(path))
        for name, m, k in (("tgate", 3, 2), ("tgate0", 3, 0), ("tgatent", 0, 0)):
            config = dataclasses.replace(PRESETS["tiny"], name=name, practice=3, sealed=3, continuation=m, samples=k)
            suite = build_suite(config, target.tokenizer, target.identity, target.vocab_size)
            suite.compute_truth(target)
            if m:
                build_trajectories(suite, target, batch_size=4)
    return path


@pytest.fixture()
def env(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_HOME", str(home))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    return tmp_path


def suite(name):
    from tasks import load_suite

    return load_suite(name)


BASE = """
name: {name}
team: {{rule: {rule}, members: [uniform, unigram]{weights}}}
suites: [{{name: tgate, split: {split}, role: in-distribution}}]
thresholds: {{mean_abs_log10_error: {{max: {mal}}}, trajectory_kl: {{max: {tkl}}}}}
holdout: {{max_submissions: {limit}}}
report: {{worst_prompts: 2}}
"""


def config(env, text):
    path = env / "gate.yaml"
    path.write_text(text)
    return path


def base(name="t", rule="best-on-practice", split="practice", mal=100, tkl=1000, limit=10, weights=""):
    return BASE.format(name=name, rule=rule, split=split, mal=mal, tkl=tkl, limit=limit, weights=weights)


def gate(path):
    result = runner.invoke(app, ["gate", "--config", str(path)])
    m = re.search(r"report: (\S+)/report\.md", result.output)
    report = json.loads((Path(m.group(1)) / "report.json").read_text()) if m else {}
    return result.exit_code, result.output, report


def answers(name, split, **options):
    """A member's own answers to the split's whole-continuation questions, computed here (not through the gate)."""
    from predictors import PredictorContext, create
    from predictors.chain import answer_questions, split_questions

    s = suite("tgate")
    ctx = PredictorContext.from_suite(s)
    return answer_questions(create(name, ctx, **options), ctx, split_questions(s, split)).predictions


def truth_of(split, preds):
    from tasks.trajectory import load_trajectories

    t = load_trajectories(suite("tgate")).split(split)
    rows = [t.index(p.continuation_id) for p in preds]
    return np.asarray(t.logprob, np.float64)[rows], np.asarray(t.lengths, np.int64)[rows]


def direct_trajectory_kl(split, rest):
    """Per sample, the sum over steps of KL(target's stored step distribution || the baseline's), from the stored
    distributions, for a predictor that predicts the same distribution everywhere (``uniform`` or ``unigram``)."""
    from predictors import Prediction, densify
    from tasks.trajectory.steps import step_plan

    s = suite("tgate")
    plan = step_plan(s, split)
    logq = np.log(densify(Prediction("x", {}, rest), s.vocabulary, s.background))
    total = {}
    for t in range(1, plan.rounds + 1):
        truth = plan.truth(t)
        logp = truth.logp.astype(np.float64)
        kl = (np.exp(logp) * (logp - logq)).sum(axis=1)
        for i, v in zip(truth.samples, kl, strict=True):
            total[int(i)] = total.get(int(i), 0.0) + v
    return np.array([total[i] for i in sorted(total)])


def test_practice_pass_with_values_from_a_direct_recomputation(env):
    code, out, report = gate(config(env, base()))
    assert code == 0, out
    assert report["verdict"] == "PASS" and "one eval among many, not a proof of safety" in out
    s = report["suites"][0]
    assert s["kind"] == "trajectory" and set(s["run_ids"]) == {"whole_continuations", "step_wise"}
    # best-on-practice by practice mean |log10 error|, each member's score recomputed from its own answers
    direct = {}
    for name in ("uniform", "unigram"):
        preds = answers(name, "practice")
        true, n_tok = truth_of("practice", preds)
        direct[name] = np.mean(np.abs(np.array([p.logprob for p in preds]) - true)) / LN10
    assert s["team"]["practice_metric"] == "mean_abs_log10_error"
    assert s["team"]["practice_scores"] == pytest.approx(direct, rel=1e-9)
    chosen = min(direct, key=direct.get)
    assert s["team"]["chosen"] == chosen
    # the scored split (practice here: exact numbers) against the chosen member's answers and the truth
    preds = answers(chosen, "practice")
    true, n_tok = truth_of("practice", preds)
    want = aggregate(true, np.array([p.logprob for p in preds]), n_tok, seed=0)["mean_abs_log10_error"]
    check = {c["metric"]: c for c in s["checks"]}
    mal = check["mean_abs_log10_error"]
    assert [mal["estimate"], *mal["ci"]] == pytest.approx(want, rel=1e-9)
    assert mal["bound"] == mal["ci"][1] and mal["passed"] and mal["op"] == "<="
    # and the run record holds the same per-question errors
    per = pd.read_csv(env / "results" / s["run_ids"]["whole_continuations"] / "per_prompt.csv")
    np.testing.assert_allclose(per["abs_error_log10"], np.abs(per["pred_logprob"] - per["true_logprob"]) / LN10)
    # trajectory KL: the mean over samples of the summed per-step KL, from the stored step distributions
    totals = direct_trajectory_kl("practice", chosen)
    tkl = check["trajectory_kl"]
    assert tkl["estimate"] == pytest.approx(totals.mean(), rel=1e-6)
    assert tkl["ci"] == pytest.approx(list(bootstrap_ci(totals, seed=0))[1:], rel=1e-6)
    steps = pd.read_csv(env / "results" / s["run_ids"]["step_wise"] / "per_prompt.csv")
    by_sample = steps.groupby("continuation_id", sort=False)["kl_nats"].sum()
    assert by_sample.mean() == pytest.approx(totals.mean(), rel=1e-6)
    assert sum(e for e, _, _ in s["trajectory_kl_per_step"]) == pytest.approx(totals.mean(), rel=1e-6)
    md = Path(report["report_dir"], "report.md").read_text()
    assert "trajectory suite" in md and "mean abs log10 error" in md and "Worst 2 questions" in md
    assert "continuations asked" in " ".join(md.split())  # the trajectory wording of the disclaimer


def test_fail_exits_1_naming_the_failing_bound(env):
    code, out, report = gate(config(env, base(name="f", mal=0.001, tkl=1000)))
    assert code == 1 and report["verdict"] == "FAIL", out
    check = {c["metric"]: c for c in report["suites"][0]["checks"]}
    assert not check["mean_abs_log10_error"]["passed"] and check["trajectory_kl"]["passed"]
    assert "**FAIL**" in out and "upper CI bound" in out
    code, out, report = gate(config(env, base(name="f2", mal=100, tkl=0.001)))
    assert code == 1 and not {c["metric"]: c for c in report["suites"][0]["checks"]}["trajectory_kl"]["passed"]


def test_mixture_is_the_chain_rule_over_the_per_step_mixture(env):
    from predictors import Prediction, densify

    code, out, report = gate(config(env, base(name="mix", rule="mixture", weights=", weights: [0.25, 0.75]")))
    assert code == 0, out
    s = suite("tgate")
    q = 0.25 * densify(Prediction("x", {}, "uniform"), s.vocabulary, s.background) + 0.75 * densify(
        Prediction("x", {}, "unigram"), s.vocabulary, s.background)
    q /= q.sum()
    per = pd.read_csv(env / "results" / report["suites"][0]["run_ids"]["whole_continuations"] / "per_prompt.csv")
    from predictors.chain import split_questions

    qs = {(x.prompt.id, x.continuation_id): x for x in split_questions(s, "practice")}
    want = [np.log(q[list(qs[(r.prompt_id, r.continuation_id)].token_ids)]).sum() for r in per.itertuples()]
    np.testing.assert_allclose(per["pred_logprob"], want, rtol=1e-9)
    totals = direct_trajectory_kl("practice", "unigram")  # not the mixture: a check that the numbers differ
    tkl = {c["metric"]: c for c in report["suites"][0]["checks"]}["trajectory_kl"]["estimate"]
    assert tkl != pytest.approx(totals.mean(), rel=1e-3)


def test_sealed_counts_two_submissions_releases_on_the_grid_and_refuses_past_the_limit(env):
    s = suite("tgate")
    path = config(env, base(name="sl", split="sealed", limit=3))
    code, out, report = gate(path)
    assert code == 0, out
    sub = report["suites"][0]
    chosen = sub["team"]["chosen"]
    # one submission for the whole continuations, one for the step-wise attempt, for the team and the chosen member
    assert holdout.count(s, "team:sl") == 2 and holdout.count(s, chosen) == 2
    assert sub["submissions"] == {"team:sl": 2, chosen: 2}
    for c in sub["checks"]:
        assert all(abs(v / 0.05 - round(v / 0.05)) < 1e-6 for v in [c["estimate"], *c["ci"]]), c
    exact = json.loads((env / "results" / sub["run_ids"]["whole_continuations"] / "summary.json").read_text())
    lo, hi = exact["metrics"]["all"]["mean_abs_log10_error"][1:]
    mal = {c["metric"]: c for c in sub["checks"]}["mean_abs_log10_error"]
    assert mal["ci"][0] <= lo and mal["ci"][1] >= hi  # rounded outward
    # no sealed truth value in the report: the questions' true log-probabilities (nats, log10) are not in it
    preds = answers(chosen, "sealed")
    true, _ = truth_of("sealed", preds)
    folder = Path(sub and report["report_dir"])
    text = (folder / "report.json").read_text() + (folder / "report.md").read_text()
    secret = {f"{w:.6g}" for v in true for w in (v, -v, v / LN10, -v / LN10)}
    assert not numbers_in(text) & secret
    # the same predictions again reveal nothing new: not counted; but the next gate would need 2 more of 3: refused
    runs_before = len(list((env / "results").glob("*/summary.json")))
    code, out, report = gate(path)
    assert code == 1 and report["verdict"] == "REFUSED" and "would add 2 sealed submissions" in out
    assert len(list((env / "results").glob("*/summary.json"))) == runs_before
    assert holdout.count(s, "team:sl") == 2


def test_a_next_token_and_a_trajectory_suite_each_judged_on_their_own_kind(env):
    text = base(name="both").replace(
        "suites: [{name: tgate, split: practice, role: in-distribution}]",
        "suites: [{name: tgate, split: practice}, {name: tgatent, split: practice}]").replace(
        "thresholds: {", "thresholds: {kl_nats: {max: 50}, ")
    code, out, report = gate(config(env, text))
    assert code == 0, out
    traj, nt = report["suites"]
    assert {c["metric"] for c in traj["checks"]} == {"mean_abs_log10_error", "trajectory_kl"}
    assert [c["metric"] for c in nt["checks"]] == ["kl_nats"] and nt["kind"] == "next-token"


@pytest.mark.parametrize("edit, message", [
    # a trajectory metric on a next-token suite
    (lambda t: t.replace("{name: tgate, split: practice, role: in-distribution}",
                         "{name: tgatent, split: practice, thresholds: {trajectory_kl: {max: 3}}}"),
     "suites[0].thresholds.trajectory_kl: suite 'tgatent' is a next-token suite and trajectory_kl is a trajectory "
     "metric"),
    # a next-token metric on a trajectory suite
    (lambda t: t.replace("role: in-distribution}", "thresholds: {kl_nats: {max: 3}}}"),
     "suites[0].thresholds.kl_nats: suite 'tgate' is a trajectory suite and kl_nats is a next-token metric"),
    # top-level trajectory thresholds and only a next-token suite
    (lambda t: t.replace("name: tgate,", "name: tgatent,"),
     "suites[0]: suite 'tgatent' is a next-token suite and none of the thresholds given"),
    (lambda t: t.replace("{name: tgate, split: practice, role: in-distribution}",
                         "{name: tgatent, split: practice, thresholds: {kl_nats: {max: 9}}}"),
     "thresholds.mean_abs_log10_error: a trajectory metric, but no suite listed is a trajectory suite"),
    (lambda t: t.replace("trajectory_kl: {max: 1000}", "trajectory_kl: {max: 1000, statistic: median}"),
     "only statistic: mean applies"),
    (lambda t: t.replace("name: tgate,", "name: tgate0,"),
     "suites[0].thresholds.trajectory_kl: suite 'tgate0' has no target samples"),
])
def test_config_errors_of_the_wrong_kind_exit_2(env, edit, message):
    result = runner.invoke(app, ["gate", "--config", str(config(env, edit(base())))])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (env / "results").exists()  # nothing ran


def test_without_samples_the_whole_continuations_alone_can_be_gated(env):
    text = base(name="nos").replace("name: tgate,", "name: tgate0,").replace(", trajectory_kl: {max: 1000}", "")
    code, out, report = gate(config(env, text))
    assert code == 0, out
    assert set(report["suites"][0]["run_ids"]) == {"whole_continuations"}
