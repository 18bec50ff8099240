"""Step-wise questions along the target's samples (issue 12 parts 3 and 5): released one step at a time, a predictor
never sees a token before its prediction for that position is committed, rounds are refused out of order and cannot
be revised, and the trajectory KL (sum over steps of the next-token KL along target samples) equals a direct
computation with scipy. Real SmolLM2 samples on real wiki prompts (the session's ``traj`` suite: 3 + 3 prompts,
M = 4, K = 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import rel_entr

from predictors import PredictorContext, create
from predictors.format import Prediction


@pytest.fixture(autouse=True)
def _home(trajectory_home, monkeypatch, tmp_path):
    monkeypatch.setenv("LOGITPRED_HOME", str(trajectory_home))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger" / "submissions.jsonl"))


@pytest.fixture
def suite():
    from tasks import load_suite

    return load_suite("traj")


def _plan(suite, split="practice"):
    from tasks.trajectory.steps import step_plan

    return step_plan(suite, split)


def test_step_questions_show_exactly_the_tokens_before_the_step(suite):
    """Step t of a sample shows prompt + y_<t and nothing after; identical prefixes are one question; step 1 is the
    prompt itself (text included); every sample reaching step t is covered exactly once."""
    from tasks.trajectory import load_trajectories

    plan = _plan(suite)
    conts = load_trajectories(suite).split("practice").continuations
    samples = [c for c in conts if c.kind == "sampled"]
    prompts = {p.id: p for p in suite.prompts("practice")}
    assert len(samples) == 3 * 2 and plan.rounds == max(len(c.token_ids) for c in samples) <= 4
    first = plan.questions(1)
    assert [q.id for q in first] == [f"{p}:s0@0" for p in prompts]  # K samples share the prompt: one question each
    assert all(q.text == prompts[q.prompt_id].text and q.token_ids == prompts[q.prompt_id].token_ids for q in first)
    for t in range(1, plan.rounds + 1):
        covered = []
        for q in plan.questions(t):
            for i in q.samples:
                c = conts[i]
                assert q.token_ids == prompts[c.prompt_id].token_ids + c.token_ids[: t - 1]
                covered.append(c.id)
            assert set(q.line()) == {"prompt_id", "text", "token_ids", "of_prompt", "step"}
        assert sorted(covered) == sorted(c.id for c in samples if len(c.token_ids) >= t)
        truth = plan.truth(t)
        np.testing.assert_allclose(np.exp(truth.logp.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
        assert [conts[i].token_ids[t - 1] for i in truth.samples] == truth.sampled.tolist()
    with pytest.raises(Exception, match="steps 1 to"):
        plan.questions(plan.rounds + 1)


class Peeker:
    """A predictor that keeps every view it is given and tries to read ahead: it looks for any token of a sample
    beyond the step it is asked about. It answers uniform."""

    name = "peeker"

    def __init__(self, vocab_size):
        self.V, self.calls = vocab_size, []

    def predict(self, prompts):
        self.calls.append([(p.id, p.token_ids) for p in prompts])
        return [Prediction(p.id) for p in prompts]


def test_in_process_predictor_gets_one_step_at_a_time_and_nothing_ahead(suite):
    from evals.stepwise import run_stepwise
    from tasks.trajectory import load_trajectories

    conts = [c for c in load_trajectories(suite).split("practice").continuations if c.kind == "sampled"]
    prompts = {p.id: p for p in suite.prompts("practice")}
    peeker = Peeker(suite.vocab_size)
    result = run_stepwise(suite, "practice", peeker, None, predictor_meta={"name": "peeker-1", "options": {}},
                          batch_size=100)
    plan = _plan(suite)
    assert len(peeker.calls) == plan.rounds  # one call per round (batch 100 covers a round)
    for t, call in enumerate(peeker.calls, 1):
        for pid, ids in call:
            base = prompts[pid.split(":s")[0]].token_ids
            assert ids[: len(base)] == base and len(ids) - len(base) == t - 1  # exactly y_<t, never y_t
        # whatever it saw so far, it never saw a sample's token t or later
        seen = {ids for c in peeker.calls[:t] for _, ids in c}
        for c in conts:
            p = prompts[c.prompt_id].token_ids
            assert all(p + c.token_ids[:u] not in seen for u in range(t, len(c.token_ids) + 1))
    m = result.summary["metrics"]
    # uniform: KL_t = sum p log p + log V exactly, summed along each sample (scipy's rel_entr, float64)
    tr = load_trajectories(suite).split("practice")
    direct = []
    for c in conts:
        full = tr.full(tr.index(c.id)).astype(np.float64)
        p = np.exp(full)
        direct.append(sum(rel_entr(p[s], np.full(p.shape[1], 1.0 / p.shape[1])).sum() for s in range(len(full))))
    assert m["trajectory_kl"]["total"][0] == pytest.approx(np.mean(direct), rel=1e-6)
    assert result.summary["questions"] == "trajectory-steps" and result.summary["round"] == "all"
    assert len(result.per_prompt) == sum(len(c.token_ids) for c in conts)
    assert sum(x[0] for x in m["trajectory_kl"]["per_step"]) == pytest.approx(m["trajectory_kl"]["total"][0])


def test_trajectory_kl_of_an_oracle_is_zero_and_matches_trajectory_kl(suite):
    """Giving the stored distributions back scores ~0 at every step; a unigram predictor's trajectory KL equals
    ``evals.trajectory_metrics.trajectory_kl`` on the full arrays."""
    from evals.stepwise import run_stepwise
    from evals.trajectory_metrics import trajectory_kl
    from tasks.trajectory import load_trajectories

    tr = load_trajectories(suite).split("practice")
    conts = {c.id: c for c in tr.continuations if c.kind == "sampled"}
    prompts = {p.id: p for p in suite.prompts("practice")}

    class Oracle:
        name = "oracle"

        def predict(self, views):
            out = []
            for v in views:
                sid, shown = v.id.rsplit("@", 1)
                full = np.exp(tr.full(tr.index(sid)).astype(np.float64))[int(shown)]
                assert v.token_ids == prompts[conts[sid].prompt_id].token_ids + conts[sid].token_ids[: int(shown)]
                out.append(Prediction(v.id, probs=full / full.sum()))
            return out

    result = run_stepwise(suite, "practice", Oracle(), None, predictor_meta={"name": "oracle-1", "options": {}})
    assert abs(result.summary["metrics"]["trajectory_kl"]["total"][0]) < 1e-6
    ctx = PredictorContext.from_suite(suite)
    uni = create("unigram", ctx)
    result = run_stepwise(suite, "practice", uni, ctx, predictor_meta={"name": "unigram", "label": "uni-1"})
    from predictors.base import view
    from predictors.format import densify

    q = np.log(densify(uni.predict([view(suite.prompts("practice")[0])])[0], ctx.vocabulary, ctx.background))
    full = [tr.full(tr.index(cid)) for cid in conts]
    direct = trajectory_kl(full, [np.broadcast_to(q, f.shape) for f in full])
    assert result.summary["metrics"]["trajectory_kl"]["total"][0] == pytest.approx(direct.total.mean(), rel=1e-6)


def _uniform_file(path, lines):
    path.write_text("".join(json.dumps({"prompt_id": q["prompt_id"], "top": {}, "rest": "uniform"}) + "\n" for q in lines))
    return path


def test_file_rounds_in_order_only_and_never_revised(suite, tmp_path):
    """Files: step t before step t-1 is refused (questions and scores), an incomplete round is refused whole and
    commits nothing, a committed round cannot be scored again, round 1 starts a new attempt."""
    from evals.rounds import RoundError, state
    from evals.scoring import ScoringError
    from evals.stepwise import release, score_round_file

    plan = _plan(suite)
    meta = {"name": "file", "label": "team-a"}
    with pytest.raises(RoundError, match="round 1"):
        release(suite, "practice", 2, "team-a")
    one = release(suite, "practice", 1, "team-a")
    two_early = _uniform_file(tmp_path / "r2.jsonl", [q.line() for q in plan.questions(2)])
    with pytest.raises(RoundError, match="round 1 of .team-a. on traj/practice is not scored yet"):
        score_round_file(suite, "practice", 2, two_early, predictor=meta)
    partial = _uniform_file(tmp_path / "r1-partial.jsonl", one[:-1])
    with pytest.raises(ScoringError, match="without a prediction"):
        score_round_file(suite, "practice", 1, partial, predictor=meta)
    assert state(suite.name, "practice", plan.commitment, "team-a") is None  # nothing committed
    r1 = score_round_file(suite, "practice", 1, _uniform_file(tmp_path / "r1.jsonl", one), predictor=meta)
    assert r1.summary["attempt"] == 1 and r1.summary["round"] == 1 and "trajectory_kl" not in r1.summary["metrics"]
    two = release(suite, "practice", 2, "team-a")
    prompts = {p.id: p for p in suite.prompts("practice")}
    assert all(len(q["token_ids"]) == len(prompts[q["of_prompt"]].token_ids) + 1 for q in two)
    f2 = _uniform_file(tmp_path / "r2.jsonl", two)
    score_round_file(suite, "practice", 2, f2, predictor=meta)
    with pytest.raises(RoundError, match="already scored"):
        score_round_file(suite, "practice", 2, f2, predictor=meta)
    last = None
    for t in range(3, plan.rounds + 1):
        last = score_round_file(suite, "practice", t, _uniform_file(tmp_path / f"r{t}.jsonl",
                                                                   release(suite, "practice", t, "team-a")),
                                predictor=meta)
    assert last is not None and "trajectory_kl" in last.summary["metrics"]
    assert state(suite.name, "practice", plan.commitment, "team-a")["complete"]
    again = score_round_file(suite, "practice", 1, _uniform_file(tmp_path / "r1b.jsonl", one), predictor=meta)
    assert again.summary["attempt"] == 2  # a new attempt: its rounds start again from 2
    with pytest.raises(RoundError, match="round 3"):
        release(suite, "practice", 3, "team-a")


def test_sealed_attempt_is_one_submission_and_keeps_no_truth(suite, tmp_path):
    from evals.holdout import count
    from evals.stepwise import run_stepwise

    peeker = Peeker(suite.vocab_size)
    result = run_stepwise(suite, "sealed", peeker, None, predictor_meta={"name": "peeker-s", "options": {}})
    assert count(suite, "peeker-s") == 1 and result.summary["holdout"]["submission"] == 1
    assert not [c for c in result.per_prompt.columns if c.startswith("target_")]
    record = json.loads((result.run_dir / "summary.json").read_text())
    assert record["metrics"]["trajectory_kl"]["total"][0] > 0


def test_rounds_from_the_cli(suite, tmp_path):
    """`suite questions --round`, `predict --round`, `score --round`: out of order is exit 2 naming the round to
    score; the last round prints the trajectory KL; `run` reports it beside the whole-continuation scores."""
    from typer.testing import CliRunner

    from evals.cli import app

    runner = CliRunner()
    plan = _plan(suite)
    r = runner.invoke(app, ["suite", "questions", "traj", "--split", "practice", "--round", "2"])
    assert r.exit_code == 2 and "--name" in r.output
    r = runner.invoke(app, ["suite", "questions", "traj", "--split", "practice", "--round", "2", "--name", "unigram"])
    assert r.exit_code == 2 and "not scored yet" in " ".join(r.output.split())
    r = runner.invoke(app, ["suite", "questions", "traj", "--split", "practice", "--round", "1"])
    assert r.exit_code == 0 and [json.loads(x)["prompt_id"] for x in r.output.splitlines()] == [
        q.id for q in plan.questions(1)]
    for t in range(1, plan.rounds + 1):
        f = tmp_path / f"unigram-{t}.jsonl"
        r = runner.invoke(app, ["predict", "-p", "unigram", "-o", str(f), "-s", "traj", "--round", str(t)])
        assert r.exit_code == 0, r.output
        assert len(f.read_text().splitlines()) == len(plan.questions(t))
        if t == 2:  # before round 2 is scored, round 3 is not released to this label
            r3 = runner.invoke(app, ["predict", "-p", "unigram", "-o", str(tmp_path / "x.jsonl"), "-s", "traj",
                                     "--round", "3"])
            assert r3.exit_code == 2 and "round 2" in r3.output
        r = runner.invoke(app, ["score", str(f), "-s", "traj", "--round", str(t)])
        assert r.exit_code == 0, r.output
    assert "trajectory KL" in r.output
    r = runner.invoke(app, ["score", str(f), "-s", "traj", "--round", str(plan.rounds)])
    assert r.exit_code == 2 and "already scored" in " ".join(r.output.split())
    r = runner.invoke(app, ["run", "-s", "traj", "-p", "uniform", "--split", "practice"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "trajectory KL" in r.output
    from evals.records import read_runs

    steps = [x for x in read_runs() if x.get("questions") == "trajectory-steps" and x["predictor"]["name"] == "uniform"]
    assert len(steps) == 1 and steps[0]["round"] == "all"
    est = steps[0]["metrics"]["trajectory_kl"]["total"][0]
    assert f"{est:.3f}" in r.output
