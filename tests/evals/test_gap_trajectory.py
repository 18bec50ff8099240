"""The predictability gap of trajectory metrics (``evals.gap_trajectory``) on real tiny trajectory suites (real
SmolLM2, real wiki text, a real tiny search): an ordinary trajectory suite with samples and a found trajectory suite
built from the search with ``--continuation`` and ``--ordinary``. The gap of each metric equals a direct computation
from the run records' per-question CSVs (numpy), its CI a direct independent-resampling bootstrap; the leaderboard's
gap table has the trajectory rows; the gate's ``gap:`` criteria on trajectory metrics pass and fail on both bounds
(and score the step-wise attempt the gap reads when no threshold asks for it); a metric of the wrong kind, or suites
of two kinds, exit 2 naming them."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evals.cli import app
from evals.gap_trajectory import gap_table

runner = CliRunner()
BEHAVIOURS = '{"id": "rome", "text": " Rome is"}\n{"id": "then", "text": " and then"}\n'  # two tokens each
M, K = 2, 2


@pytest.fixture(scope="module")
def suites(tiny_suite, target, tmp_path_factory):
    """``gtord`` (ordinary trajectory suite: 6 + 6 wiki prompts of the tiny preset, M = 2, K = 2), ``gtfound`` (found
    trajectory suite from a real tiny search, M = 2, K = 2, ordinary ``gtord``) and ``gtnt`` (a second next-token
    suite beside ``tiny``), with truth and trajectories, in the session's data home."""
    from tasks import PRESETS, build_suite
    from tasks.trajectory import build_trajectories

    config = dataclasses.replace(PRESETS["tiny"], name="gtord", practice=6, sealed=6, continuation=M, samples=K)
    ordinary = build_suite(config, target.tokenizer, target.identity, target.vocab_size)
    ordinary.compute_truth(target)
    build_trajectories(ordinary, target, batch_size=4)
    nt = build_suite(dataclasses.replace(PRESETS["tiny"], name="gtnt", practice=2, sealed=2), target.tokenizer,
                     target.identity, target.vocab_size)
    nt.compute_truth(target)
    tmp = tmp_path_factory.mktemp("gap-traj-search")
    (tmp / "b.jsonl").write_text(BEHAVIOURS)
    res = runner.invoke(app, ["search", "--behaviours", str(tmp / "b.jsonl"), "--prefix", "I think that", "--free",
                              "2", "--method", "random", "--lambda", "0,1", "--budget", "12", "--seed", "0", "-O",
                              "search_width=4", "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["suite", "build", "gtfound", "--from-search", str(tmp / "run"), "--min-plausibility",
                              "-60", "--continuation", str(M), "--samples", str(K), "--ordinary", "gtord"])
    assert res.exit_code == 0, res.output
    return tmp


@pytest.fixture()
def env(suites, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    return tmp_path


def direct_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 40000) -> tuple[float, float]:
    """2.5% and 97.5% quantiles of mean(b*) - mean(a*), each sample resampled on its own (the reference)."""
    r = np.random.default_rng(123)
    d = b[r.integers(0, b.size, (n, b.size))].mean(1) - a[r.integers(0, a.size, (n, a.size))].mean(1)
    return tuple(np.quantile(d, [0.025, 0.975]))


def test_gap_equals_the_run_records_and_a_direct_bootstrap(env):
    from evals.records import read_runs

    for name in ("gtord", "gtfound"):
        res = runner.invoke(app, ["run", "--suite", name, "-p", "uniform", "-p", "unigram", "--split", "practice"])
        assert res.exit_code == 0, res.output
    df = gap_table("gtord", "gtfound", "practice")
    assert set(df["metric"]) == {"mean_abs_log10_error", "within_10x_share", "trajectory_kl"}
    assert set(df["predictor"]) == {"uniform", "unigram"} and len(df) == 6
    runs = {r["run_id"]: r for r in read_runs()}
    checked_ci = 0
    for r in df.itertuples():
        ra, rb = runs[r.ordinary_run], runs[r.shifted_run]
        pa, pb = (pd.read_csv(Path(x["_dir"]) / "per_prompt.csv") for x in (ra, rb))
        if r.metric == "trajectory_kl":  # per sample: the sum of the per-step KL
            assert ra["questions"] == rb["questions"] == "trajectory-steps"
            a, b = (p.groupby("continuation_id")["kl_nats"].sum().to_numpy() for p in (pa, pb))
            assert a.size == 6 * K and r.n_ordinary == a.size and r.n_shifted == b.size
            for x, run in ((a, ra), (b, rb)):  # the per-sample values reproduce the record's trajectory KL
                assert x.mean() == pytest.approx(run["metrics"]["trajectory_kl"]["total"][0], rel=1e-12)
        else:
            assert ra["questions"] == rb["questions"] == "trajectory"
            col = pa["abs_error_log10"].to_numpy(), pb["abs_error_log10"].to_numpy()
            a, b = col if r.metric == "mean_abs_log10_error" else ((c <= 1.0).astype(float) for c in col)
            key = {"mean_abs_log10_error": "mean_abs_log10_error", "within_10x_share": "within_10x_share"}[r.metric]
            assert r.ordinary_mean == pytest.approx(ra["metrics"]["all"][key][0], abs=1e-12)
            assert (r.n_ordinary, r.n_shifted) == (a.size, b.size) == (6, len(pb))
        assert r.gap == pytest.approx(b.mean() - a.mean(), abs=1e-12)
        assert r.ordinary_mean == pytest.approx(a.mean()) and r.shifted_mean == pytest.approx(b.mean())
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            lo, hi = direct_bootstrap(a, b)
            se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
            assert r.gap_low == pytest.approx(lo, abs=0.2 * se) and r.gap_high == pytest.approx(hi, abs=0.2 * se)
            checked_ci += 1
    assert checked_ci >= 2
    # the leaderboard's gap section holds the trajectory rows, the same numbers
    res = runner.invoke(app, ["leaderboard", "-s", "gtord", "-s", "gtfound", "--split", "practice", "--no-html"])
    assert res.exit_code == 0, res.output
    board = pd.read_csv(env / "results" / "leaderboards" / "gap-practice.csv")
    assert set(board["metric"]) == set(df["metric"]) and set(board["shifted"]) == {"gtfound"}
    merged = board.merge(df, on=["predictor", "metric"], suffixes=("", "_direct"))
    assert len(merged) == 6 and np.allclose(merged["gap"], merged["gap_direct"], rtol=0, atol=1e-12)
    md = (env / "results" / "leaderboards" / "all-practice.md").read_text()
    assert "Predictability gap" in md and "| gtord | gtfound | practice | unigram | trajectory_kl |" in md



def test_per_sample_kl_of_rounds_scored_one_file_at_a_time(env):
    """An attempt scored round by round (``logitpred score FILE --round t``) has one record per round: the per-sample
    trajectory KL gathers them, reproduces the last round's trajectory KL, and equals the in-process attempt's."""
    from evals.gap_trajectory import sample_kl, values
    from evals.records import read_runs
    from evals.stepwise import release, score_round_file
    from tasks import load_suite
    from tasks.trajectory.steps import step_plan

    suite = load_suite("gtfound")
    plan = step_plan(suite, "practice")
    for t in range(1, plan.rounds + 1):  # every prediction uniform: KL_t = log V - H_t, known in closed form
        path = env / f"r{t}.jsonl"
        path.write_text("".join(json.dumps({"prompt_id": q["prompt_id"], "top": {}, "rest": "uniform"}) + "\n"
                                for q in release(suite, "practice", t, "files")))
        score_round_file(suite, "practice", t, path, predictor={"name": "files"})
    res = runner.invoke(app, ["run", "--suite", "gtfound", "-p", "uniform", "--split", "practice"])
    assert res.exit_code == 0, res.output
    runs = read_runs()
    last = next(r for r in runs if r.get("round") == plan.rounds and r["predictor"]["name"] == "files")
    whole = next(r for r in runs if r.get("round") == "all" and r["predictor"]["name"] == "uniform")
    kl = sample_kl(last, runs)
    assert kl.size == len(plan.sample_ids()) and set(kl.index) == set(plan.sample_ids())
    assert kl.mean() == pytest.approx(last["metrics"]["trajectory_kl"]["total"][0], rel=1e-12)
    assert np.allclose(kl.sort_index().to_numpy(), sample_kl(whole).sort_index().to_numpy(), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"round\(s\) \[1\]"):
        sample_kl(last, [r for r in runs if r.get("round") != 1])
    with pytest.raises(ValueError, match="is read from a trajectory-steps run"):
        values(next(r for r in runs if r.get("questions") == "trajectory"), "trajectory_kl")


CONFIG = """
name: gapt
team: {{rule: best-on-practice, members: [uniform, unigram]}}
suites: [{{name: {a}, split: sealed}}, {{name: {b}, split: sealed}}]
thresholds: {{{thresholds}}}
holdout: {{max_submissions: {limit}}}
gap:
{gap}
"""


def gate(tmp: Path, gap: str, a: str = "gtord", b: str = "gtfound", limit: int = 10) -> tuple[int, str, dict]:
    kind = {"gtord": "mean_abs_log10_error", "gtfound": "mean_abs_log10_error", "tiny": "kl_nats", "gtnt": "kl_nats"}
    path = tmp / "gate.yaml"
    thresholds = ", ".join(f"{m}: {{max: 1000}}" for m in sorted({kind[a], kind[b]}))  # one per kind listed
    path.write_text(CONFIG.format(a=a, b=b, thresholds=thresholds, gap=gap, limit=limit))
    res = runner.invoke(app, ["gate", "--config", str(path)])
    m = re.search(r"report: (\S+)/report\.md", res.output)
    return res.exit_code, res.output, json.loads((Path(m.group(1)) / "report.json").read_text()) if m else {}


def test_gate_bounds_the_trajectory_gap_both_ways(env):
    code, out, report = gate(env, "  - {ordinary: gtord, shifted: gtfound, metric: mean_abs_log10_error, max: 100}\n"
                                  "  - {ordinary: gtord, shifted: gtfound, metric: trajectory_kl, min: -1000}\n"
                                  "  - {ordinary: gtord, shifted: gtfound, metric: within_10x_share}")
    assert code == 0, out
    assert report["verdict"] == "PASS" and report["gap"]["passed"]
    by = {s["suite"]: s for s in report["suites"]}
    assert by["gtfound"]["role"] == "shifted"
    # no threshold asked for the trajectory KL: the gate ran the step-wise attempt the gap reads
    assert set(by["gtord"]["run_ids"]) == {"whole_continuations", "step_wise"}
    mal, tkl, within = report["gap"]["checks"]
    runs = env / "results"
    a, b = (pd.read_csv(runs / by[n]["run_ids"]["whole_continuations"] / "per_prompt.csv")["abs_error_log10"]
            .to_numpy() for n in ("gtord", "gtfound"))
    exact = b.mean() - a.mean()
    assert abs(mal["gap"] - exact) <= 0.025 + 1e-9 and mal["low"] <= exact <= mal["high"]  # released on 0.05
    assert mal["compared"] == mal["high"] and (mal["n_ordinary"], mal["n_shifted"]) == (a.size, b.size)
    sa, sb = (pd.read_csv(runs / by[n]["run_ids"]["step_wise"] / "per_prompt.csv").groupby("continuation_id")[
        "kl_nats"].sum().to_numpy() for n in ("gtord", "gtfound"))
    exact = sb.mean() - sa.mean()
    assert abs(tkl["gap"] - exact) <= 0.025 + 1e-9 and tkl["low"] <= exact <= tkl["high"]
    assert tkl["compared"] == tkl["low"] and tkl["n_ordinary"] == sa.size == 6 * K
    assert within["bound"] is None and within["passed"]
    md = (Path(report["report_dir"]) / "report.md").read_text()
    assert "mean trajectory_kl" in md and "| gtord (sealed, team " in md

    code, out, report = gate(env, "  - {ordinary: gtord, shifted: gtfound, metric: mean_abs_log10_error, max: -100}\n"
                                  "  - {ordinary: gtord, shifted: gtfound, metric: trajectory_kl, min: 1000}")
    assert code == 1 and report["verdict"] == "FAIL", out
    assert [c["passed"] for c in report["gap"]["checks"]] == [False, False]
    assert all(s["passed"] for s in report["suites"])  # only the gap failed


def test_the_step_wise_attempt_the_gap_needs_counts_as_a_sealed_submission(env):
    code, out, report = gate(env, "  - {ordinary: gtord, shifted: gtfound, metric: trajectory_kl}", limit=1)
    assert code == 1 and report["verdict"] == "REFUSED", out
    assert "would add 2 sealed submissions" in report["reason"] and report["suites"] == []


@pytest.mark.parametrize("a,b,gap,message", [
    ("gtord", "gtfound", "{ordinary: gtord, shifted: gtfound, metric: kl_nats, max: 1}",
     "kl_nats is a next-token metric and 'gtord' is a trajectory suite and 'gtfound' a trajectory suite"),
    ("tiny", "gtnt", "{ordinary: tiny, shifted: gtnt, metric: trajectory_kl, max: 1}",
     "trajectory_kl is a trajectory metric and 'tiny' is a next-token suite and 'gtnt' a next-token suite"),
    ("tiny", "gtfound", "{ordinary: tiny, shifted: gtfound, metric: mean_abs_log10_error}",
     "'tiny' is a next-token suite and 'gtfound' a trajectory suite; a gap compares two suites of one kind"),
])
def test_wrong_kind_exits_2_naming_it(env, a, b, gap, message):
    code, out, _ = gate(env, f"  - {gap}", a, b)
    assert code == 2 and message in " ".join(out.split()), out
