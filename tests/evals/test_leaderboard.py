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
