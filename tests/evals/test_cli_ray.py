"""`logitpred truth --backend ray` end to end on a real local Ray cluster (started by the command): the same truth
files, byte for byte, and the same commitment as the local backend on this machine; shards are cleaned up."""

import json

from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()


def test_truth_on_ray_equals_local(target, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = runner.invoke(app, ["suite", "build", "rr", "--corpus", "wiki", "--practice", "3", "--sealed", "3",
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    from tasks import load_suite

    local = load_suite("rr")
    record = json.loads((local.truth_dir / "truth.json").read_text())
    result = runner.invoke(app, ["truth", "--suite", "rr", "--rebuild", "--backend", "ray", "--workers", "2",
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    again = json.loads((local.truth_dir / "truth.json").read_text())
    assert again["files"] == record["files"] and again["commitment"] == record["commitment"]
    assert not any(p.name.startswith(".shards") for p in local.truth_dir.parent.iterdir())
    result = runner.invoke(app, ["truth", "--suite", "rr", "--workers", "2"])
    assert result.exit_code == 2 and "--backend ray" in result.output
