"""The CLI end to end on the tiny suite: build (reuse), predict, score (with bad lines), leaderboard ordering."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_help_for_every_command():
    for cmd in (["--help"], ["suite", "build", "--help"], ["truth", "--help"], ["predict", "--help"],
                ["score", "--help"], ["leaderboard", "--help"], ["run", "--help"]):
        code, out = invoke(*cmd)
        assert code == 0 and "Usage" in out


def test_end_to_end(tiny_suite, tmp_path):
    code, out = invoke("suite", "build", "tiny")
    assert code == 0 and "already built" in out and tiny_suite.commitment in out
    code, out = invoke("truth", "--suite", "tiny", "--verify")
    assert code == 0 and "verified" in out
    files = {}
    for name in ("uniform", "unigram"):
        files[name] = tmp_path / f"{name}.jsonl"
        code, out = invoke("predict", "-p", name, "-s", "tiny", "--split", "sealed", "-o", str(files[name]))
        assert code == 0, out
        code, out = invoke("score", str(files[name]), "-s", "tiny", "--split", "sealed")
        assert code == 0, out
    code, out = invoke("leaderboard", "-s", "tiny", "--split", "sealed")
    assert code == 0, out
    board = pd.read_csv(tiny_suite.path.parent.parent / "results" / "leaderboards" / "tiny-sealed.csv")
    assert list(board["predictor"]) == ["unigram", "uniform"]
    assert board["kl_mean"][0] < board["kl_mean"][1]
    assert (board["kl_ci_low"] <= board["kl_mean"]).all() and (board["kl_mean"] <= board["kl_ci_high"]).all()
    # uniform's KL is exactly log V minus the target's entropy, prompt by prompt
    run_dir = next((tiny_suite.path.parent.parent / "results").glob("*-tiny-sealed-uniform"))
    per_prompt = pd.read_csv(run_dir / "per_prompt.csv")
    # (float32 truth sums to 1 within ~2e-5, times log V ~ 10.8: hence the 1e-3 tolerance)
    np.testing.assert_allclose(per_prompt["kl_nats"], np.log(49152) - per_prompt["target_entropy_nats"], atol=1e-3)
    run = json.loads((run_dir / "summary.json").read_text())
    assert run["target"]["id"] == tiny_suite.target["id"] and run["suite"]["commitment"] == tiny_suite.commitment
    assert run["environment"]["numpy"] and run["predictions_file"]["sha256"]


def test_bad_lines_reported_good_ones_scored_and_strict_fails(tiny_suite, tmp_path):
    ids = [p.id for p in tiny_suite.prompts("practice")]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt_id": ids[0], "top": {" the": 0.3}}),
        json.dumps({"prompt_id": ids[1], "top": {" thhe": 0.3}}),
        "{oops",
        json.dumps({"prompt_id": ids[2], "top": {" the": 0.9, " a": 0.9}}),
    ]) + "\n")
    code, out = invoke("score", str(path), "-s", "tiny", "--split", "practice", "--name", "mixed")
    flat = out
    assert code == 0, out
    assert "line 2" in flat and "thhe" in flat and "line 3: malformed JSON" in flat and "line 4" in flat
    assert "1 scored" in flat or "1 scored," in flat
    code, out = invoke("score", str(path), "-s", "tiny", "--split", "practice", "--strict")
    assert code == 1 and "strict mode" in out
    code, out = invoke("score", str(tmp_path / "missing.jsonl"), "-s", "tiny")
    assert code == 1 and "does not exist" in out


def test_unknown_predictor_and_suite(tiny_suite, tmp_path):
    code, out = invoke("predict", "-p", "oracle", "-s", "tiny", "-o", str(tmp_path / "x.jsonl"))
    assert code == 2 and "unknown predictor 'oracle'" in out and "uniform" in out
    code, out = invoke("leaderboard", "-s", "nosuite")
    assert code == 1 and "no scored runs" in out
    code, out = invoke("predict", "-p", "uniform", "-s", "nosuite", "-o", str(tmp_path / "x.jsonl"))
    assert code == 2 and "logitpred suite build nosuite" in out
