"""Holdout hygiene: the submission ledger (counts per predictor and sealed prompts, kept when truth is recomputed,
concurrent writers, a torn last line, older rows, sealed scoring counted by ``evals.scoring.score``) and the coarse
release (grid rounding, Blum & Hardt's Ladder)."""

import multiprocessing as mp
from types import SimpleNamespace

import numpy as np
import pytest

from evals import holdout
from evals.scoring import score
from predictors import Prediction, densify
from predictors.rows import ValidatedPredictions


@pytest.fixture()
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    return tmp_path / "ledger.jsonl"


def test_coarse_rounds_to_the_grid():
    assert holdout.coarse(4.9731, 0.05) == 4.95
    assert holdout.coarse(4.9731, 0.05, "up") == 5.0 and holdout.coarse(4.9731, 0.05, "down") == 4.95
    assert holdout.coarse(0.15, 0.05, "up") == 0.15 and holdout.coarse(0.15, 0.05, "down") == 0.15  # on the grid
    assert holdout.release_interval(3.14159, 3.01, 3.29, 0.05) == (3.15, 3.0, 3.3)
    with pytest.raises(ValueError, match="step"):
        holdout.coarse(1.0, 0)


def test_ladder_releases_only_real_improvements():
    # worked by hand: 4.98 does not beat 5.0 by more than 0.05, 4.93 does not beat 4.9, 4.7 does
    assert holdout.ladder([5.0, 4.98, 4.9, 4.93, 4.7, 5.3], 0.05) == [5.0, 5.0, 4.9, 4.9, 4.7, 4.7]
    assert holdout.ladder([], 0.05) == []


def _record_many(path: str, n: int) -> None:
    import os

    os.environ["LOGITPRED_LEDGER"] = path
    suite = SimpleNamespace(name="s", sealed_prompts_sha256="P1", commitment="c1")
    for _ in range(n):
        holdout.record(suite, "p")


def test_ledger_counts_per_predictor_and_sealed_prompts_with_concurrent_writers(ledger):
    s1 = SimpleNamespace(name="s", sealed_prompts_sha256="P1", commitment="c1")
    s2 = SimpleNamespace(name="s", sealed_prompts_sha256="P2", commitment="c2")
    procs = [mp.get_context("spawn").Process(target=_record_many, args=(str(ledger), 25)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert holdout.count(s1, "p") == 50  # no lost update between the two writers
    assert holdout.count(s2, "p") == 0 and holdout.count(s1, "q") == 0  # new prompts, other predictor: fresh counts
    recomputed = SimpleNamespace(name="s", sealed_prompts_sha256="P1", commitment="c1-other-float-bits")
    assert holdout.count(recomputed, "p") == 50  # same prompts, truth recomputed: the count stays
    assert holdout.check(s1, "p", None) == 50 and holdout.check(s1, "p", 51) == 50
    with pytest.raises(holdout.HoldoutError, match="limit 50"):
        holdout.check(s1, "p", 50)


def test_sealed_scoring_is_counted_practice_is_not(tiny_suite, ledger):
    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    for split, rest in (("practice", "unigram"), ("sealed", "unigram"), ("sealed", "uniform")):
        ids = [p.id for p in tiny_suite.prompts(split)]
        q = np.stack([densify(Prediction(i, {}, rest), vocab, bg) for i in ids])
        result = score(tiny_suite, split, ValidatedPredictions(ids, q, [], []), predictor={"name": "counted"})
    assert holdout.count(tiny_suite, "counted") == 2
    assert result.summary["holdout"]["submission"] == 2
    assert ledger.read_text().count(result.summary["run_id"]) == 1
    # the very same predictions scored again reveal nothing new: not counted again
    again = score(tiny_suite, "sealed", ValidatedPredictions(ids, q, [], []), predictor={"name": "counted"})
    assert again.summary["holdout"]["submission"] == 2 and holdout.count(tiny_suite, "counted") == 2


def test_a_format_1_digest_is_never_taken_for_a_repeat(tiny_suite, ledger):
    """A ledger line of the old digest format (bare sha256 of ids + rows) for the very same predictions: the new
    format is never equal to it, so the re-submission is counted once more (never less); after that, repeats again."""
    import hashlib
    import json

    ids = [p.id for p in tiny_suite.prompts("sealed")]
    q = np.stack([densify(Prediction(i, {}, "unigram"), tiny_suite.vocabulary, tiny_suite.background) for i in ids])
    holdout.record(tiny_suite, "migrated", digest=hashlib.sha256(json.dumps(ids).encode() + q.tobytes()).hexdigest())
    first = score(tiny_suite, "sealed", ValidatedPredictions(ids, q, [], []), predictor={"name": "migrated"})
    again = score(tiny_suite, "sealed", ValidatedPredictions(ids, q, [], []), predictor={"name": "migrated"})
    assert first.summary["holdout"]["submission"] == again.summary["holdout"]["submission"] == 2
    assert first.summary["holdout"]["predictions_sha256"].startswith("v2:")


def test_score_refuses_sealed_past_the_limit(tiny_suite, ledger, monkeypatch):
    monkeypatch.setenv("LOGITPRED_SEALED_LIMIT", "1")
    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    ids = [p.id for p in tiny_suite.prompts("sealed")]
    for k, rest in enumerate(("unigram", "uniform")):
        q = np.stack([densify(Prediction(i, {}, rest), vocab, bg) for i in ids])
        if k == 0:
            score(tiny_suite, "sealed", ValidatedPredictions(ids, q, [], []), predictor={"name": "capped"})
        else:
            with pytest.raises(holdout.HoldoutError, match="limit 1"):
                score(tiny_suite, "sealed", ValidatedPredictions(ids, q, [], []), predictor={"name": "capped"})
    assert holdout.count(tiny_suite, "capped") == 1


def test_recomputing_truth_keeps_the_sealed_count(tiny_suite, target, ledger, tmp_path, monkeypatch):
    """The tiny suite (a copy of its data) scored 3 times on sealed, truth recomputed with batch size 1: still 3."""
    import shutil

    from tasks import load_suite
    from tasks.paths import data_dir

    home = tmp_path / "home"
    for part in ("suites", "suite-builds/tiny", "truth/tiny"):
        shutil.copytree(data_dir() / part, home / part, symlinks=True, dirs_exist_ok=True)
    monkeypatch.setenv("LOGITPRED_HOME", str(home))
    suite = load_suite("tiny")
    before = suite.commitment
    assert before == tiny_suite.commitment and suite.path.resolve().parent.parent.parent == home
    for _ in range(3):
        holdout.record(suite, "recounted")
    after = suite.compute_truth(target, rebuild=True, batch_size=1)
    fresh = load_suite("tiny")
    assert fresh.commitment == after and fresh.sealed_prompts_sha256 == suite.sealed_prompts_sha256
    fresh.verify_commitment()
    assert holdout.count(fresh, "recounted") == 3
    with pytest.raises(holdout.HoldoutError, match="scored 3 time"):
        holdout.check(fresh, "recounted", 3)
    assert holdout.record(fresh, "recounted") == 4


def test_torn_last_line_is_skipped_and_older_rows_still_count(ledger):
    import json

    suite = SimpleNamespace(name="s", sealed_prompts_sha256="P1", commitment="c1")
    old = {"time": "t", "suite": "s", "commitment": "c1", "predictor": "p", "run_id": None, "via": "score"}
    ledger.write_text(json.dumps(old) + "\n" + json.dumps(old) + "\n" + '{"time": "t", "suite": "s", "comm')
    assert holdout.count(suite, "p") == 2  # two rows of the older format (commitment only); the torn line skipped
    assert holdout.record(suite, "p") == 3
    lines = ledger.read_text().splitlines()  # the torn line was cut off before the append
    assert len(lines) == 3 and json.loads(lines[2])["prompts"] == "P1" and json.loads(lines[2])["commitment"] == "c1"
    # truth recomputed: the older rows are placed on these prompts by the new row that names both
    moved = SimpleNamespace(name="s", sealed_prompts_sha256="P1", commitment="c9")
    assert holdout.count(moved, "p") == 3
    ledger.write_text(ledger.read_text() + "{broken\n" + json.dumps(old) + "\n")
    with pytest.raises(holdout.HoldoutError, match="line 4 is corrupted"):
        holdout.count(suite, "p")


def test_trajectory_sealed_scorings_are_counted_limited_and_released_on_the_grid(trajectory_home, ledger,
                                                                                 monkeypatch):
    """Trajectory sealed splits follow the same hygiene: each whole-continuation scoring of new answers and each
    step-wise attempt is one sealed submission of the label (the same answers again are not), practice is never
    counted (in any order: ``predictors.digest.answers_digest``), a label at the limit is refused before anything is
    scored, and the new metrics have grid steps."""
    from evals.stepwise import run_stepwise
    from evals.trajectory_scoring import score_trajectory_predictions
    from predictors import PredictorContext, create
    from predictors.chain import answer_questions, split_questions
    from predictors.trajectory_format import TrajectoryPrediction
    from tasks import load_suite

    monkeypatch.setenv("LOGITPRED_HOME", str(trajectory_home))
    monkeypatch.setenv("LOGITPRED_SEALED_LIMIT", "3")
    s = load_suite("traj")
    ctx = PredictorContext.from_suite(s)
    p = create("unigram", ctx)
    preds = answer_questions(p, ctx, split_questions(s, "sealed")).predictions
    meta = {"name": "unigram"}
    score_trajectory_predictions(s, "practice", answer_questions(p, ctx, split_questions(s, "practice")).predictions,
                                 predictor=meta)
    assert holdout.count(s, "unigram") == 0
    first = score_trajectory_predictions(s, "sealed", preds, predictor=meta)
    assert first.summary["holdout"]["submission"] == 1
    again = score_trajectory_predictions(s, "sealed", preds[::-1], predictor=meta)  # the same answers, reordered
    assert holdout.count(s, "unigram") == 1  # nothing new revealed: not counted
    assert again.summary["holdout"]["predictions_sha256"] == first.summary["holdout"]["predictions_sha256"]
    steps = run_stepwise(s, "sealed", p, ctx, predictor_meta=meta)  # a step-wise attempt: one more
    assert steps.summary["holdout"]["submission"] == 2 and holdout.count(s, "unigram") == 2
    other = [TrajectoryPrediction(x.prompt_id, x.continuation_id, x.logprob - 0.5) for x in preds]
    assert score_trajectory_predictions(s, "sealed", other, predictor=meta).summary["holdout"]["submission"] == 3
    runs = len(list((ledger.parent / "results").glob("*/summary.json")))
    with pytest.raises(holdout.HoldoutError, match="limit 3"):
        score_trajectory_predictions(s, "sealed", [TrajectoryPrediction(x.prompt_id, x.continuation_id, -1.0)
                                                   for x in preds], predictor=meta)
    with pytest.raises(holdout.HoldoutError, match="limit 3"):
        run_stepwise(s, "sealed", p, ctx, predictor_meta=meta)
    assert holdout.count(s, "unigram") == 3 and len(list((ledger.parent / "results").glob("*/summary.json"))) == runs
    # the release grid of the new metrics: orders of magnitude and nats on 0.05, the share within 10x on 0.01
    assert holdout.step_for("mean_abs_log10_error") == 0.05 and holdout.step_for("trajectory_kl") == 0.05
    assert holdout.step_for("within_10x_share") == 0.01
    assert holdout.release_interval(2.3712, 2.1234, 2.6071, holdout.step_for("mean_abs_log10_error")) == (
        2.35, 2.1, 2.65)
