"""The CLI for trajectory suites: `suite build --continuation/--samples/--behaviours`, `suite questions`, and
`truth --verify` covering the trajectory commitment; bad combinations are exit 2 naming the option."""

import json

from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()


def test_trajectory_suite_from_the_cli(target, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    beh = tmp_path / "behaviours.jsonl"
    beh.write_text('{"id": "the", "text": " the"}\n{"id": "however", "text": " However, the"}\n')
    args = ["suite", "build", "tt", "--corpus", "wiki", "--practice", "2", "--sealed", "2", "--continuation", "3",
            "--samples", "1", "--behaviours", str(beh)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trajectory commitment" in result.output
    result = runner.invoke(app, ["suite", "questions", "tt", "--split", "sealed"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    prompts = [x for x in lines if "continuation_id" not in x]
    questions = [x for x in lines if "continuation_id" in x]
    assert len(prompts) == 2 and {x["kind"] for x in questions} <= {"realized", "given"}
    assert sum(x["kind"] == "realized" for x in questions) == 2
    for q in questions:  # the continuation's own token ids, at most M of them
        assert q["continuation_id"].startswith(q["prompt_id"] + ":") and 1 <= len(q["token_ids"]) <= 3
    result = runner.invoke(app, ["truth", "--suite", "tt", "--verify"])
    assert result.exit_code == 0 and "verified" in result.output
    result = runner.invoke(app, args)  # the same build again is reused, trajectories included
    assert result.exit_code == 0 and "already built" in result.output


def test_samples_without_continuation_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["suite", "build", "x", "--corpus", "wiki", "--samples", "2"])
    assert result.exit_code == 2 and "--continuation" in result.output
