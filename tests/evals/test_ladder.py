"""``logitpred ladder`` on two tiny rungs: rung 1 approved at level 1 by level 0, its composite with unigram approved
as a composite, rung 2 approved by a team that includes both, the chain written with its evidence; a rerun reuses
what is done; a failed rung stops the ladder; bad configs name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evals.cli import app
from evals.ladder import LadderConfigError, as_approver, ladder_path, load_ladder, run_ladder
from tasks.io import read_json

runner = CliRunner()
TRAIN = {"corpora": ["wiki"], "steps": 2, "batch_size": 2, "context": 16, "warmup": 1, "eval_every": 2,
         "eval_batches": 1}


@pytest.fixture
def registry(data_home):
    from predictors.approval import registry_path

    path = registry_path()
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


def _config(tmp_path: Path, name: str, max_kl: float, **extra) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "suites": ["tiny"], "thresholds": {"kl_nats": {"max": max_kl}},
        "approvers": ["uniform", "unigram"], "train": TRAIN, "checkpoint_every": 1,
        "rungs": [{"name": "a", "hidden": 32, "layers": 1}, {"name": "b", "hidden": 64, "layers": 1}], **extra}))
    return path


def test_two_rungs_form_a_chain(registry, tiny_suite, tmp_path):
    from predictors.approval import load_records
    from predictors.model import trained_helper_dir

    cfg = load_ladder(_config(tmp_path, "t", 50.0, composites=[{"name": "mixture", "members": ["unigram"]}]))
    result = run_ladder(cfg)
    assert result.complete and [(e["step"], e["rung"]) for e in result.chain] == [
        ("rung", "a"), ("composite", "a"), ("rung", "b"), ("composite", "b")]
    first, composite, second, _ = result.chain
    rung_a = as_approver("model", {"path": str(trained_helper_dir("t-a"))})
    assert first["level"] == 1 and first["approvers"] == ["uniform", "unigram"]
    # the composite of rung a is approved as a composite, by the team that includes rung a, before it joins the team
    assert composite["system"] == {"name": "mixture", "options": {"members": ["unigram", rung_a]}}
    assert composite["level"] == 2 and composite["approvers"] == ["uniform", "unigram", rung_a]
    team_b = ["uniform", "unigram", rung_a, as_approver("mixture", composite["system"]["options"])]
    assert second["level"] == 3 and second["approvers"] == team_b
    records = {r.key: r for r in load_records()}
    assert records[second["record"]].approvers == second["approvers"] and records[second["record"]].level == 3
    assert records[first["record"]].level == 1
    for e in result.chain:
        assert e["evidence"] and all(Path(d).is_dir() for d in e["evidence"]) and Path(e["report"]).is_file()
    assert second["training"]["parameters"] > first["training"]["parameters"]
    assert (trained_helper_dir("t-b") / "checkpoints" / "step-000001").is_dir()
    assert read_json(Path(result.path))["chain"] == json.loads(json.dumps(result.chain))
    again = run_ladder(cfg)  # nothing retrained or re-approved; the records are the same
    assert again.complete and all(e["reused"] for e in again.chain)
    assert [e["record"] for e in again.chain] == [e["record"] for e in result.chain]
    assert len(load_records()) == 4
    code = runner.invoke(app, ["ladder", str(tmp_path / "t.yaml")])
    assert code.exit_code == 0 and "COMPLETE" in code.output


def test_a_failed_rung_stops_the_ladder(registry, tiny_suite, tmp_path):
    from predictors.approval import load_records
    from predictors.model import trained_helper_dir

    result = runner.invoke(app, ["ladder", str(_config(tmp_path, "f", 1e-6))])
    assert result.exit_code == 1 and "STOPPED" in result.output
    chain = read_json(ladder_path("f"))
    assert not chain["complete"] and [e["approved"] for e in chain["chain"]] == [False]
    assert chain["chain"][0]["record"] is None and chain["chain"][0]["evidence"]  # the failed attempt has evidence
    assert not load_records() and not trained_helper_dir("f-b").exists()


@pytest.mark.parametrize("change, match", [
    ({"colour": 1}, "unknown key"), ({"rungs": [{"name": "a"}]}, "at least two rungs"),
    ({"train": {"width": 3}}, "unknown training setting"), ({"name": "a b"}, "name must be"),
    ({"threads": 0}, "threads must be"),
])
def test_bad_configs_name_the_key(tmp_path, change, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "rungs": [{"name": "a"}, {"name": "b"}], **change}))
    with pytest.raises(LadderConfigError, match=match):
        load_ladder(path)
    out = runner.invoke(app, ["ladder", str(path)])
    assert out.exit_code == 2 and "ladder config" in out.output
