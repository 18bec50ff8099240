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

    # --table: one gate per level on the target; each team KL is the chosen member's own sealed KL (independently
    # scored here), released on the gate's 0.05-nat grid
    from evals.ladder_table import load_table
    from evals.scoring import predict_validated, score
    from predictors import PredictorContext, create
    from tasks import load_suite

    assert runner.invoke(app, ["run", "--suite", "tiny", "--split", "sealed", "-p", "uniform"]).exit_code == 0
    shown = runner.invoke(app, ["ladder", str(tmp_path / "t.yaml"), "--table", "--beside", "uniform"])
    assert shown.exit_code == 0, shown.output
    table = load_table(cfg)
    assert [r["level"] for r in table["rows"]] == [0, 1, 2] and [r["rung"] for r in table["rows"]] == [None, "a", "b"]
    assert "team KL on target, sealed tiny" in shown.output and "| 2 | b |" in shown.output
    suite = load_suite("tiny")
    top = yaml.safe_load(Path(table["rows"][2]["gate"]).read_text())["team"]["members"]
    assert [m["name"] for m in top] == ["uniform", "unigram", "model", "mixture", "model", "mixture"]
    for row in table["rows"]:
        cell = row["suites"]["tiny"]
        members = yaml.safe_load(Path(row["gate"]).read_text())["team"]["members"]
        chosen = next(m for m in members if cell["chosen"].startswith(m["name"])
                      and all(str(v) in cell["chosen"] for v in (m.get("options") or {}).values()))
        p = create(chosen["name"], PredictorContext.from_suite(suite), **(chosen.get("options") or {}))
        direct = score(suite, "sealed", predict_validated(suite, "sealed", p), predictor={"name": "direct"},
                       write=False).summary["metrics"]["kl_nats"]["mean"][0]
        assert abs(cell["kl_nats"] - direct) <= 0.025 + 1e-9, (row["level"], cell, direct)
        assert Path(row["gate_report"], "report.json").is_file() and row["verdict"] in ("PASS", "FAIL")
    assert [r["valid_loss"] for r in table["rows"][1:]] == [first["training"]["final_valid_loss"],
                                                            second["training"]["final_valid_loss"]]
    assert table["rows"][1]["approved"] and table["rows"][1]["decided_by"]["threshold"] == 50.0
    # the --beside rows are published too: released on the same grid as the levels, never the exact sealed numbers
    from evals.ladder_table import reference_rows

    ref = reference_rows(["uniform"], ["tiny"])[0]["suites"]["tiny"]
    assert all(abs(v / 0.05 - round(v / 0.05)) < 1e-9 for v in (ref["kl_nats"], *ref["ci"])), ref
    assert f"| - | uniform (approved) | - | - | reference (leaderboard) | {ref['kl_nats']:.2f} [" in shown.output


def test_a_failed_rung_stops_the_ladder(registry, tiny_suite, tmp_path):
    from predictors.approval import load_records
    from predictors.model import trained_helper_dir

    result = runner.invoke(app, ["ladder", str(_config(tmp_path, "f", 1e-6))])
    assert result.exit_code == 1 and "STOPPED" in result.output
    chain = read_json(ladder_path("f"))
    assert not chain["complete"] and [e["approved"] for e in chain["chain"]] == [False]
    assert chain["chain"][0]["record"] is None and chain["chain"][0]["evidence"]  # the failed attempt has evidence
    assert not load_records() and not trained_helper_dir("f-b").exists()
    shown = runner.invoke(app, ["ladder", str(tmp_path / "f.yaml"), "--table"])  # level 0, then where it stopped
    assert shown.exit_code == 0 and "not approved" in shown.output
    from evals.ladder_table import load_table

    rows = load_table(load_ladder(tmp_path / "f.yaml"))["rows"]
    assert [(r["level"], r["approved"], bool(r["suites"])) for r in rows] == [(0, None, True), (1, False, False)]
    assert rows[1]["decided_by"]["bound"] > rows[1]["decided_by"]["threshold"] == 1e-6


@pytest.mark.parametrize("change, match", [
    ({"colour": 1}, "unknown key"), ({"rungs": [{"name": "a"}]}, "at least two rungs"),
    ({"train": {"width": 3}}, "unknown training setting"), ({"name": "a b"}, "name must be"),
    ({"threads": 0}, "threads must be"),
    ({"rungs": [{"name": "../a"}, {"name": "b"}]}, "cannot name the helper folder"),
    ({"rungs": [{"name": "a"}, {"name": "b" * 300}]}, "cannot name the helper folder"),
])
def test_bad_configs_name_the_key(tmp_path, change, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "rungs": [{"name": "a"}, {"name": "b"}], **change}))
    with pytest.raises(LadderConfigError, match=match):
        load_ladder(path)
    out = runner.invoke(app, ["ladder", str(path)])
    assert out.exit_code == 2 and "ladder config" in out.output
