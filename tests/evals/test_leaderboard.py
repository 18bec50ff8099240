"""Leaderboards from real runs on the tiny suite: ordering, bootstrap CIs and paired tests against a direct computation,
the sealed release on the holdout grid, and the written Markdown/CSV/HTML (with plots that decode as PNG)."""

import base64
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from evals import leaderboard as lb
from evals.cli import app
from evals.scoring import score
from predictors import Prediction, densify
from predictors.rows import ValidatedPredictions


@pytest.fixture()
def board_root(tiny_suite, tmp_path, monkeypatch):
    """Three predictors scored on both splits of the tiny suite into a fresh results folder."""
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    for split in ("practice", "sealed"):
        ids = [p.id for p in tiny_suite.prompts(split)]
        uni = np.stack([densify(Prediction(i, {}, "uniform"), vocab, bg) for i in ids])
        ugr = np.stack([densify(Prediction(i, {}, "unigram"), vocab, bg) for i in ids])
        for name, q in (("uniform", uni), ("unigram", ugr), ("half", 0.5 * uni + 0.5 * ugr)):
            score(tiny_suite, split, ValidatedPredictions(ids, q, [], []), predictor={"name": name})
    return tmp_path / "results"


def test_ordering_cis_and_paired_tests_match_a_direct_computation(board_root):
    df = lb.leaderboard("tiny", "practice", root=board_root)
    assert list(df["predictor"]) == ["unigram", "half", "uniform"]
    kls = {r.predictor: pd.read_csv(board_root / r.run_id / "per_prompt.csv").set_index("prompt_id")["kl_nats"]
           for r in df.itertuples()}
    means = {k: v.mean() for k, v in kls.items()}
    assert list(df["predictor"]) == sorted(means, key=means.get)
    for r in df.itertuples():
        x = kls[r.predictor].to_numpy()
        assert r.kl_mean == pytest.approx(x.mean())
        direct = stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
                                 rng=np.random.default_rng(0)).confidence_interval
        assert (r.kl_ci_low, r.kl_ci_high) == pytest.approx((direct.low, direct.high))
        # an independent plain-numpy percentile bootstrap lands close (Monte Carlo error only)
        boot = x[np.random.default_rng(1).integers(0, x.size, (20000, x.size))].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        assert abs(r.kl_ci_low - lo) < 0.1 * (hi - lo) and abs(r.kl_ci_high - hi) < 0.1 * (hi - lo)
    for i in range(len(df) - 1):  # each row against the next: same prompts, paired
        a, b = kls[df.at[i, "predictor"]], kls[df.at[i + 1, "predictor"]]
        d = (b - a.reindex(b.index)).to_numpy()
        assert df.at[i, "delta_next"] == pytest.approx(d.mean()) and df.at[i, "delta_next"] > 0
        assert df.at[i, "n_paired"] == 6
        ci = stats.bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                             rng=np.random.default_rng(0)).confidence_interval
        assert (df.at[i, "delta_ci_low"], df.at[i, "delta_ci_high"]) == pytest.approx((ci.low, ci.high))
        assert df.at[i, "p_wilcoxon"] == pytest.approx(stats.wilcoxon(b.to_numpy(), a.reindex(b.index).to_numpy()).pvalue)
    assert np.isnan(df["delta_next"].iloc[-1])


def test_sealed_numbers_are_released_on_the_grid(board_root):
    exact = lb.leaderboard("tiny", "sealed", root=board_root, release=False)
    shown = lb.leaderboard("tiny", "sealed", root=board_root)
    assert list(shown["predictor"]) == list(exact["predictor"])
    for col in ("kl_mean", "kl_ci_low", "kl_ci_high", "kl_median", "delta_next"):
        v = shown[col].dropna().to_numpy()
        np.testing.assert_allclose(v / 0.05, np.round(v / 0.05), atol=1e-6)
    assert (shown["kl_ci_low"] <= exact["kl_ci_low"]).all() and (shown["kl_ci_high"] >= exact["kl_ci_high"]).all()
    assert (np.abs(shown["kl_mean"] - exact["kl_mean"]) <= 0.025 + 1e-9).all()
    assert (shown["kl_ladder"] == shown["kl_mean"]).all()  # one sealed run each: the Ladder releases it rounded
    assert (shown["p_wilcoxon"].dropna() >= exact["p_wilcoxon"].dropna()).all()


def test_written_files_and_self_contained_html(board_root):
    df = lb.leaderboards(["tiny"], "practice", root=board_root)
    paths = lb.write_all(df, "practice", root=board_root)
    csv = pd.read_csv(paths["csv"])
    assert list(csv["predictor"]) == ["unigram", "half", "uniform"]
    md = paths["md"].read_text()
    assert "| unigram |" in md and "Wilcoxon p" in md
    html = paths["html"].read_text()
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4  # bars + distribution, context, calibration
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "unigram" in html and "uniform" in html


def test_leaderboard_cli_across_suites(board_root):
    result = CliRunner().invoke(app, ["leaderboard", "--split", "practice"])
    assert result.exit_code == 0, result.output
    assert (board_root / "leaderboards" / "index-practice.html").is_file()
    assert (board_root / "leaderboards" / "tiny-practice.csv").is_file()
    missing = CliRunner().invoke(app, ["leaderboard", "--suite", "nosuch"])
    assert missing.exit_code == 1 and "no scored runs" in missing.output


def test_ladder_history_follows_the_sealed_prompts_not_the_commitment():
    """Recomputed truth changes the commitment's float bits, not the holdout: the Ladder keeps its history."""
    from evals.leaderboard import _ladder

    def run(kl, commitment, prompts="p1"):
        return {"suite": {"name": "s", "commitment": commitment, "sealed_prompts_sha256": prompts}, "split": "sealed",
                "predictor": {"name": "x"}, "metrics": {"kl_nats": {"mean": [kl, kl, kl]}}}

    runs = [run(3.0, "c1"), run(2.5, "c2"), run(2.48, "c2")]  # truth recomputed between the first and second run
    assert _ladder(runs, "s", "x", "p1") == 2.5  # 3.0, then 2.5 (better by more than 0.05), then 2.48 (not)
    assert _ladder(runs + [run(1.0, "c3", prompts="p2")], "s", "x", "p2") == 1.0  # a new holdout starts afresh
    legacy = [{**r, "suite": {"name": "s", "commitment": "c1"}} for r in runs[:1]]
    assert _ladder(legacy, "s", "x", "c1") == 3.0  # records from before the prompts hash: keyed by commitment


@pytest.fixture()
def trajectory_board(trajectory_home, tiny_suite, tmp_path, monkeypatch):
    """Whole-continuation scorings and step-wise attempts of uniform and unigram on both splits of the session's
    trajectory suite ``traj``, and a next-token run on ``tiny``, into a fresh results folder."""
    from evals.stepwise import run_stepwise
    from evals.trajectory_scoring import score_trajectory_predictions
    from predictors import PredictorContext, create
    from predictors.chain import answer_questions, split_questions
    from tasks import load_suite

    monkeypatch.setenv("LOGITPRED_HOME", str(trajectory_home))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    s = load_suite("traj")
    ctx = PredictorContext.from_suite(s)
    for name in ("uniform", "unigram"):
        p = create(name, ctx)
        for split in ("practice", "sealed"):
            preds = answer_questions(p, ctx, split_questions(s, split)).predictions
            score_trajectory_predictions(s, split, preds, predictor={"name": name})
            run_stepwise(s, split, p, ctx, predictor_meta={"name": name})
    ids = [q.id for q in tiny_suite.prompts("practice")]
    q = np.stack([densify(Prediction(i, {}, "unigram"), tiny_suite.vocabulary, tiny_suite.background) for i in ids])
    score(tiny_suite, "practice", ValidatedPredictions(ids, q, [], []), predictor={"name": "unigram"})
    return tmp_path / "results"


def test_trajectory_rows_beside_next_token_rows(trajectory_board):
    from evals.records import read_runs
    from evals.stats import bootstrap_ci

    runs = {(r["predictor"]["name"], r["split"], r.get("questions")): r for r in read_runs(trajectory_board)
            if r["suite"]["name"] == "traj"}
    df = lb.leaderboard("traj", "practice", root=trajectory_board)
    assert list(df["questions"]) == ["trajectory", "trajectory"]
    # ranked by mean |log10 error|, each value the run record's own, recomputed from its per-question errors
    errs = {}
    for r in df.itertuples():
        whole = runs[(r.predictor, "practice", "trajectory")]
        per = pd.read_csv(trajectory_board / whole["run_id"] / "per_prompt.csv")
        errs[r.predictor] = per.set_index(["prompt_id", "continuation_id"])["abs_error_log10"]
        x = np.abs(per["pred_logprob"] - per["true_logprob"]).to_numpy() / np.log(10)
        assert [r.mal10_mean, r.mal10_ci_low, r.mal10_ci_high] == pytest.approx(list(bootstrap_ci(x, seed=0)))
        steps = runs[(r.predictor, "practice", "trajectory-steps")]
        totals = pd.read_csv(trajectory_board / steps["run_id"] / "per_prompt.csv").groupby(
            "continuation_id", sort=False)["kl_nats"].sum().to_numpy()
        assert r.tkl_mean == pytest.approx(totals.mean())
        assert [r.tkl_mean, r.tkl_ci_low, r.tkl_ci_high] == steps["metrics"]["trajectory_kl"]["total"]
        assert r.n == len(per) and r.n_samples == steps["n_samples"] and np.isnan(r.kl_mean)
    assert df["mal10_mean"].is_monotonic_increasing
    a, b = errs[df.at[0, "predictor"]], errs[df.at[1, "predictor"]]
    d = (b - a.reindex(b.index)).to_numpy()
    assert df.at[0, "delta_next"] == pytest.approx(d.mean()) and df.at[0, "n_paired"] == len(d)
    assert df.at[0, "p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    # sealed: on the grid (0.05 orders of magnitude and nats, 0.01 for the share), bounds outward, the Ladder
    exact = lb.leaderboard("traj", "sealed", root=trajectory_board, release=False)
    shown = lb.leaderboard("traj", "sealed", root=trajectory_board)
    for col in ("mal10_mean", "mal10_ci_low", "mal10_ci_high", "tkl_mean", "tkl_ci_low", "tkl_ci_high"):
        v = shown[col].to_numpy()
        np.testing.assert_allclose(v / 0.05, np.round(v / 0.05), atol=1e-6)
    assert (shown["tkl_ci_high"] >= exact["tkl_ci_high"]).all() and (shown["mal10_ci_low"] <= exact["mal10_ci_low"]).all()
    assert (shown["mal10_ladder"] == shown["mal10_mean"]).all()
    # across suites: next-token KL for tiny, trajectory metrics for traj, in one table and one page
    both = lb.leaderboards(None, "practice", root=trajectory_board)
    assert set(zip(both["suite"], both["questions"], strict=True)) == {("tiny", "next-token"), ("traj", "trajectory")}
    paths = lb.write_all(both, "practice", root=trajectory_board)
    md = paths["md"].read_text()
    assert "Mean KL by suite" in md and "Trajectory suites" in md and "trajectory KL nats [95% CI]" in md
    html = paths["html"].read_text()
    assert "Trajectory suites" in html and "mean |log10 error| [95% CI]" in html
    result = CliRunner().invoke(app, ["leaderboard", "--split", "sealed", "--suite", "traj"])
    assert result.exit_code == 0, result.output
    assert "trajectory questions" in result.output and f"{shown.at[0, 'tkl_mean']:.3f}" in result.output
