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


def test_score_whole_continuation_predictions(target, tmp_path, monkeypatch):
    """`logitpred score` on a trajectory suite: a perfect file scores exactly 0 error; bad lines are rejected by name
    and the rest scored; the run record holds one row per question."""
    import pandas as pd

    from tasks import load_suite
    from tasks.trajectory import load_trajectories

    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    beh = tmp_path / "behaviours.jsonl"
    beh.write_text('{"id": "the", "text": " the"}\n')
    result = runner.invoke(app, ["suite", "build", "ts", "--corpus", "wiki", "--practice", "3", "--sealed", "2",
                                 "--continuation", "3", "--behaviours", str(beh)])
    assert result.exit_code == 0, result.output
    truth = load_trajectories(load_suite("ts")).split("practice")
    shown = [c for c in truth.continuations if c.kind != "sampled"]
    perfect = tmp_path / "perfect.jsonl"
    perfect.write_text("".join(json.dumps({"prompt_id": c.prompt_id, "continuation_id": c.id,
                                           "logprob": float(truth.logprob[truth.index(c.id)])}) + "\n"
                               for c in shown))
    result = runner.invoke(app, ["score", str(perfect), "-s", "ts", "--split", "practice", "--name", "oracle"])
    assert result.exit_code == 0, result.output
    run = sorted((tmp_path / "results").glob("*perfect*"))[-1]
    per = pd.read_csv(run / "per_prompt.csv")
    assert len(per) == len(shown) and (per["error_nats"] == 0).all() and (run / "calibration.png").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["questions"] == "trajectory" and summary["metrics"]["all"]["mean_abs_log10_error"][0] == 0
    lines = perfect.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    first = json.loads(lines[0])
    bad.write_text("\n".join([json.dumps({**first, "logprob": 0.5}), *lines[1:],
                              json.dumps({"prompt_id": "nope", "continuation_id": "x", "logprob": -1})]) + "\n")
    result = runner.invoke(app, ["score", str(bad), "-s", "ts", "--split", "practice", "--name", "half"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "line 1" in text and "logprob" in text and f"{len(shown) - 1} of {len(shown)} questions scored" in text
    assert "nope" in text
