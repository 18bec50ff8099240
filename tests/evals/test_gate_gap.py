"""The predictability gap: ``evals.gap.gap_ci`` against a direct independent bootstrap and the normal approximation;
the gate's ``gap:`` section on the real tiny suite and a real found suite (pass, fail, the number equal to the two
run records' per-prompt means, role shifted read from the manifest, config errors exit 2); the leaderboard's gap
table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evals.cli import app
from evals.gap import gap_ci, gap_table

runner = CliRunner()


def test_gap_ci_matches_a_direct_independent_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 1.5, size=150), rng.gamma(3.0, 1.2, size=40)
    g = gap_ci(a, b, seed=0, n_resamples=4000)
    assert g["gap"] == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    assert g["pairing"] == "independent" and (g["n_ordinary"], g["n_shifted"]) == (150, 40)
    # direct: resample each sample on its own, many times
    r = np.random.default_rng(123)
    d = (b[r.integers(0, b.size, (40000, b.size))].mean(1) - a[r.integers(0, a.size, (40000, a.size))].mean(1))
    lo, hi = np.quantile(d, [0.025, 0.975])
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert g["low"] == pytest.approx(lo, abs=0.1 * se) and g["high"] == pytest.approx(hi, abs=0.1 * se)
    assert g["high"] - g["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert g["ordinary"][0] == pytest.approx(a.mean()) and g["shifted"][0] == pytest.approx(b.mean())
    with pytest.raises(ValueError, match="non-finite"):
        gap_ci(a, np.array([1.0, np.inf]))


@pytest.fixture(scope="module")
def found(tiny_suite, target, tmp_path_factory):
    """A found suite ``tfound`` (ordinary suite: tiny) from a real tiny search, with truth."""
    from tasks import load_suite
    from tasks.found import build_found_suite

    tmp = tmp_path_factory.mktemp("gap-search")
    (tmp / "b.jsonl").write_text('{"id": "paris", "text": " Paris"}\n{"id": "the", "text": " the"}\n')
    res = runner.invoke(app, ["search", "--behaviours", str(tmp / "b.jsonl"), "--prefix", "I think that", "--free",
                              "2", "--method", "random", "--lambda", "0,1", "--budget", "12", "--seed", "0", "-O",
                              "search_width=4", "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    s = build_found_suite("tfound", [tmp / "run"], target.tokenizer, target.identity, target.vocab_size,
                          min_plausibility=-60.0, ordinary="tiny")
    s.compute_truth(target)
    return load_suite("tfound")


@pytest.fixture()
def env(found, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    return tmp_path


CONFIG = """
name: gapg
team: {{rule: best-on-practice, members: [uniform, unigram]}}
suites: [{{name: tiny, split: sealed, role: in-distribution}}, {{name: tfound, split: sealed}}]
thresholds: {{kl_nats: {{max: 50}}}}
gap:
{gap}
"""


def gate(tmp: Path, gap: str) -> tuple[int, str, dict]:
    path = tmp / "gate.yaml"
    path.write_text(CONFIG.format(gap=gap))
    res = runner.invoke(app, ["gate", "--config", str(path)])
    m = re.search(r"report: (\S+)/report\.md", res.output)
    return res.exit_code, res.output, json.loads((Path(m.group(1)) / "report.json").read_text()) if m else {}


def test_gate_reports_and_bounds_the_gap(env):
    code, out, report = gate(env, "  - {ordinary: tiny, shifted: tfound, metric: kl_nats, max: 40}\n"
                                  "  - {ordinary: tiny, shifted: tfound, metric: top1}")
    assert code == 0, out
    assert report["verdict"] == "PASS" and report["gap"]["passed"]
    by = {s["suite"]: s for s in report["suites"]}
    assert by["tfound"]["role"] == "shifted" and by["tiny"]["role"] == "in-distribution"
    kl = report["gap"]["checks"][0]
    assert kl["suites"] == ["tiny", "tfound"] and kl["statistic"] == "mean"
    # independent reference: the two team run records' per-prompt KL
    runs = env / "results"
    va, vb = (pd.read_csv(runs / by[n]["run_id"] / "per_prompt.csv")["kl_nats"].to_numpy() for n in ("tiny", "tfound"))
    exact = vb.mean() - va.mean()
    assert abs(kl["gap"] - exact) <= 0.025 + 1e-9  # sealed: released to the nearest 0.05
    assert kl["low"] <= exact <= kl["high"] and kl["compared"] == kl["high"]
    assert (kl["n_ordinary"], kl["n_shifted"]) == (va.size, vb.size) and kl["pairing"] == "independent"
    assert report["gap"]["checks"][1]["bound"] is None and report["gap"]["checks"][1]["passed"]
    md = (Path(report["report_dir"]) / "report.md").read_text()
    assert "Predictability gap" in md and "| tiny (sealed, team " in md and "| tfound (sealed, team " in md
    # the leaderboard's gap table: the team label was scored on both suites
    df = gap_table("tiny", "tfound", "sealed", release=False)
    row = df[(df.predictor == "team:gapg") & (df.metric == "kl_nats")].iloc[0]
    assert row["gap"] == pytest.approx(exact, abs=1e-9)
    res = runner.invoke(app, ["leaderboard", "-s", "tiny", "-s", "tfound", "--no-html"])
    assert res.exit_code == 0, res.output
    assert "team:gapg" in (runs / "leaderboards" / "gap-sealed.csv").read_text()
    assert "Predictability gap" in (runs / "leaderboards" / "all-sealed.md").read_text()


def test_gate_fails_when_the_gap_bound_is_exceeded(env):
    code, out, report = gate(env, "  - {ordinary: tiny, shifted: tfound, metric: kl_nats, max: -40}")
    assert code == 1 and report["verdict"] == "FAIL" and not report["gap"]["passed"]
    assert all(s["passed"] for s in report["suites"])  # only the gap failed


@pytest.mark.parametrize("gap,message", [
    ("  - {ordinary: tiny, shifted: news, max: 1}", "is not under suites"),
    ("  - {ordinary: tiny, shifted: tfound, metric: nope}", "not a per-prompt next-token metric"),
    ("  - {ordinary: tiny, shifted: tiny}", "the same suite"),
    ("  - {ordinary: tiny, shifted: tfound, max: 1, min: 0}", "at most one of max and min"),
    ("  - {ordinary: tiny, shifted: tfound, max: .inf}", "not a finite number"),
    ("  []", "list at least one criterion"),
])
def test_gap_config_errors_exit_2(env, gap, message):
    code, out, _ = gate(env, gap)
    assert code == 2 and message in out.replace("\n", " "), out
