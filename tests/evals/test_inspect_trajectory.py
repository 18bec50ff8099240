"""The inspect-ai task of trajectory suites (issue 12 part 8) on the session's trajectory suite ``traj``: each
whole-continuation question is a sample answered by the same ``predictor/NAME`` provider as next-token suites, scored
by the trajectory scoring (per-sample errors and aggregates equal to ``score_trajectory_predictions`` on the same
answers), and on sealed counted in the holdout ledger, refused past the limit, with no sealed truth in the log."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log

from evals import holdout
from evals.trajectory_inspect import trajectory_predictability
from evals.trajectory_metrics import log_errors
from evals.trajectory_scoring import score_trajectory_predictions
from predictors import PredictorContext, create
from predictors.chain import answer_questions, split_questions
from tests.evals.leaks import numbers_in

REPO = Path(__file__).resolve().parents[2]
LN10 = math.log(10)


@pytest.fixture()
def isolated(trajectory_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_HOME", str(trajectory_home))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    return tmp_path


def suite():
    from tasks import load_suite

    return load_suite("traj")


def direct(split, name="unigram"):
    s = suite()
    ctx = PredictorContext.from_suite(s)
    questions = split_questions(s, split)
    return s, questions, answer_questions(create(name, ctx), ctx, questions).predictions


def results(log):
    [sc] = [sc for sc in log.results.scores if sc.name == "trajectory_metrics"]
    return {k: v.value for k, v in sc.metrics.items()}


def test_practice_task_matches_the_trajectory_scoring(isolated):
    [log] = inspect_eval(trajectory_predictability(suite="traj", split="practice"), model="predictor/unigram",
                         log_dir=str(isolated / "logs"), display="none")
    assert log.status == "success", log.error
    s, questions, preds = direct("practice")
    assert sorted(x.id for x in log.samples) == sorted(q.continuation_id for q in questions)
    assert {x.metadata["kind"] for x in log.samples} == {"realized", "given"}
    by_id = {q.continuation_id: (q, p) for q, p in zip(questions, preds, strict=True)}
    from tasks.trajectory import load_trajectories

    truth = load_trajectories(s).split("practice")
    for x in log.samples:
        q, p = by_id[x.id]
        # what the provider was given: the suite, the prompt text, the continuation; nothing of the truth
        assert [m.role for m in x.input] == ["system", "user", "assistant"]
        assert (x.input[1].text, x.input[2].text) == (q.prompt.text, q.text) and x.target == ""
        answer = x.output.metadata["logitpred"]
        assert answer["logprob"] == pytest.approx(p.logprob, rel=1e-12)
        row = truth.index(q.continuation_id)
        e = log_errors(np.array([truth.logprob[row]]), np.array([p.logprob]), np.array([truth.lengths[row]]))
        got = x.scores["trajectory_metrics"].value
        for k, v in e.items():
            assert got[k] == pytest.approx(float(v[0]), rel=1e-9, abs=1e-12), (x.id, k)
        assert x.scores["approved"].value == 1.0
    want = score_trajectory_predictions(s, "practice", preds, predictor={"name": "unigram"},
                                        write=False).summary["metrics"]["all"]
    got = results(log)
    for name, (est, lo, hi) in want.items():
        assert [got[name], got[f"{name}_ci_low"], got[f"{name}_ci_high"]] == pytest.approx([est, lo, hi], rel=1e-9)


def test_sealed_from_the_inspect_cli_counts_refuses_and_leaks_no_truth(isolated, trajectory_home):
    env = {**os.environ, "LOGITPRED_HOME": str(trajectory_home), "LOGITPRED_LEDGER": str(isolated / "ledger.jsonl")}
    cmd = [str(Path(sys.executable).parent / "inspect"), "eval", "evals/trajectory_inspect.py", "-T", "suite=traj",
           "-T", "split=sealed", "-T", "max_submissions=1", "--model", "predictor/unigram", "--log-format", "json",
           "--log-dir", str(isolated / "logs"), "--display", "plain"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    s, questions, preds = direct("sealed")
    assert holdout.count(s, "unigram") == 1
    [path] = list((isolated / "logs").glob("*.json"))
    text = path.read_text()
    log = read_eval_log(str(path))
    assert log.status == "success" and len(log.samples) == len(questions)
    assert all(x.scores["trajectory_metrics"].value == {"scored": 1.0} for x in log.samples)
    # the aggregates are the trajectory scoring's, on the release grid
    want = score_trajectory_predictions(s, "sealed", preds, predictor={"name": "x"}, write=False)
    got = results(log)
    for name in ("mean_abs_log10_error", "within_10x_share"):
        step = holdout.step_for(name)
        assert [got[name], got[f"{name}_ci_low"], got[f"{name}_ci_high"]] == pytest.approx(
            list(holdout.release_interval(*want.summary["metrics"]["all"][name], step)))
    # no true log-probability of a sealed question (nats or log10, either sign) in the log
    from tasks.trajectory import load_trajectories

    truth = np.asarray(load_trajectories(s).split("sealed").logprob, np.float64)
    secret = {f"{w:.6g}" for v in truth for w in (v, -v, v / LN10, -v / LN10)}
    assert not numbers_in(text) & secret
    # past the limit: refused before anything is scored
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # inspect exits 0 anyway
    [refused] = [read_eval_log(str(p)) for p in (isolated / "logs").glob("*.json") if p != path]
    assert refused.status == "error" and "limit 1" in refused.error.message
    assert holdout.count(s, "unigram") == 1


def test_a_question_outside_the_suite_is_answered_or_refused_by_tokenization(isolated):
    from evals.inspect_provider import _SuiteView

    sv = _SuiteView("traj", "unigram", {}, False)
    p = suite().prompts("practice")[0]
    q = sv.question(p.text, " and the")
    assert q.continuation_id.startswith("adhoc-") and q.prompt.id == p.id and len(q.token_ids) >= 2
    with pytest.raises(ValueError, match="does not tokenize apart from its prompt"):
        sv.question("The cat", "s")  # "cats" is one token: the continuation merges with the prompt
