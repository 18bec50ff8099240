"""``logitpred report`` re-renders from the stored records only: provenance and numbers come from summary.json (a
tampered value shows up as stored, so nothing was recomputed), sealed runs are released on the grid and hold no truth
value, gate reports re-render too, and unknown ids are a clear error."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evals.cli import app
from evals.scoring import score
from predictors import Prediction, densify
from predictors.rows import ValidatedPredictions
from tests.evals.leaks import numbers_in, truth_numbers

runner = CliRunner()


@pytest.fixture()
def runs(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    out = {}
    for split in ("practice", "sealed"):
        ids = [p.id for p in tiny_suite.prompts(split)]
        q = np.stack([densify(Prediction(i, {}, "unigram"), tiny_suite.vocabulary, tiny_suite.background) for i in ids])
        out[split] = score(tiny_suite, split, ValidatedPredictions(ids, q, [], []),
                           predictor={"name": "unigram", "options": {}}, seed=3).run_dir
    return out


def test_report_renders_provenance_and_stored_numbers(runs, tiny_suite):
    run_dir: Path = runs["practice"]
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["metrics"]["kl_nats"]["mean"] = [123.456, 120.0, 126.0]  # tampered: a recomputation would not show it
    (run_dir / "summary.json").write_text(json.dumps(summary))
    result = runner.invoke(app, ["report", run_dir.name[:24]])  # a unique prefix is enough
    assert result.exit_code == 0, result.output
    md = (run_dir / "report.md").read_text()
    for expected in (summary["run_id"], tiny_suite.commitment, tiny_suite.version, tiny_suite.target["id"],
                     tiny_suite.target["weights_sha256"], "unigram", "bootstrap seed 3", summary["command"],
                     f"numpy {summary['environment']['numpy']}", "git_commit", "123.4560 [120.0000, 126.0000]"):
        assert expected in md, expected
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "123.4560" in html


def test_sealed_report_is_coarse_and_holds_no_truth(runs, tiny_suite):
    run_dir: Path = runs["sealed"]
    assert runner.invoke(app, ["report", run_dir.name]).exit_code == 0
    md = (run_dir / "report.md").read_text()
    exact = json.loads((run_dir / "summary.json").read_text())["metrics"]["kl_nats"]["mean"][0]
    assert f"| kl_nats | {round(exact / 0.05) * 0.05:.4f} [" in md and "holdout grid" in md
    text = md + (run_dir / "report.html").read_text()
    assert not numbers_in(text) & truth_numbers(tiny_suite, "sealed")


def test_gate_report_rerenders_and_unknown_ids_fail(runs, tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("name: rr\nteam: {members: [unigram]}\nsuites: [{name: tiny, split: practice}]\n"
                   "thresholds: {kl_nats: {max: 20}}\n")
    assert runner.invoke(app, ["gate", "-c", str(cfg)]).exit_code == 0
    [gate_dir] = (tmp_path / "results" / "gates").iterdir()
    (gate_dir / "report.md").unlink()
    result = runner.invoke(app, ["report", gate_dir.name])
    assert result.exit_code == 0 and "Gate `rr`: **PASS**" in (gate_dir / "report.md").read_text()
    missing = runner.invoke(app, ["report", "no-such-run"])
    assert missing.exit_code == 2 and "no run or gate report" in missing.output
