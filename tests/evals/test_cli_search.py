"""`logitpred search` on the real SmolLM2 with a tiny budget: the results folder (frontier.jsonl, best.jsonl,
state.json, frontier.png, run.json) is complete and consistent; running the command again resumes a finished search
without changing it; a process killed (SIGKILL) right after its first step, run again, ends in the same state as the
uninterrupted run; bad inputs exit 2 naming the cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from evals.cli import app
from tasks.search import is_frontier

runner = CliRunner()
ARGS = ["--behaviour", " Paris", "--prefix", "The capital of France is", "--free", "2", "--method", "random",
        "--lambda", "0,1", "--budget", "12", "--seed", "3", "-O", "search_width=4"]


def _run(*args):
    return runner.invoke(app, ["search", *args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def done(target, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-search") / "run"
    res = _run(*ARGS, "--out", str(out))
    assert res.exit_code == 0, res.output
    return out, res.output


def test_search_writes_a_complete_results_folder(done):
    out, output = done
    assert {p.name for p in out.iterdir()} >= {"state.json", "frontier.jsonl", "best.jsonl", "frontier.png",
                                                "run.json"}
    front = [json.loads(x) for x in (out / "frontier.jsonl").read_text().splitlines()]
    best = [json.loads(x) for x in (out / "best.jsonl").read_text().splitlines()]
    assert front and is_frontier(front)
    assert [b["lambda"] for b in best] == [0.0, 1.0]
    for r in front + best:
        assert set(r) >= {"prompt_ids", "prompt_text", "free_ids", "lambda", "method", "log_p", "ref_per_token",
                          "ref_logprob", "greedy_is_behaviour", "reference", "target"}
        assert r["method"] == "random" and r["reference"]["kind"] == "target"
    run = json.loads((out / "run.json").read_text())
    assert run["format"] == "logitpred-search-run/1" and run["seed"] == 3 and run["budget"] == 12
    assert all(p["target_total"] <= 12 for p in run["passes"].values()) and len(run["passes"]) == 2
    assert "torch" in run["environment"] and set(run["files_sha256"]) >= {"state.json", "best.jsonl"}
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "best prompt per λ" in output and str(out) in output.replace("\n", "")


def test_rerun_resumes_and_a_killed_search_ends_in_the_same_state(done, tmp_path):
    out, _ = done
    before = (out / "state.json").read_bytes()
    res = _run(*ARGS, "--out", str(out))  # everything done: nothing is recomputed
    assert res.exit_code == 0, res.output
    assert (out / "state.json").read_bytes() == before
    # a real process killed right after it saved its first step, then run again
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "evals.cli", "search", *ARGS, "--out", str(cut)]
    import torch

    # the same thread count as the in-process run: CPU kernels differ in the last bits across thread counts
    env = {**os.environ, "LOGITPRED_KILL_AT": "search:after-step", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = json.loads((cut / "state.json").read_text())
    assert not partial["runs"]["behaviour|0"]["done"]
    res = _run(*ARGS, "--out", str(cut))
    assert res.exit_code == 0, res.output
    assert json.loads((cut / "state.json").read_text()) == json.loads(before)
    # the same folder with other settings is refused
    res = _run(*ARGS[:-4], "--seed", "4", "-O", "search_width=4", "--out", str(cut))
    assert res.exit_code == 2 and "other settings" in res.output and "seed" in res.output


@pytest.mark.parametrize("args,cause", [
    (["--behaviour", ""], "empty after tokenization"),
    (["--behaviour", " Paris", "--free", "9000"], "longer than the target's context"),
    (["--behaviour", " Paris", "--reference", "helper:gemma3-270m"], "neither the target nor an approved helper"),
    (["--behaviour", " Paris", "--reference", "gpt4"], "use 'target' or 'helper:NAME'"),
    (["--behaviour", " Paris", "--budget", "0"], "--budget"),
    (["--behaviour", " Paris", "--method", "gcg", "--budget", "3"], "too small for gcg"),
    (["--behaviour", " Paris", "--lambda", "0,-1"], "--lambda"),
    (["--behaviour", " Paris", "-O", "width=3"], "unknown option"),
])
def test_bad_input_exits_2_naming_the_cause(target, tmp_path, args, cause):
    res = _run(*args, "--out", str(tmp_path / "bad"))
    assert res.exit_code == 2, res.output
    assert cause in " ".join(res.output.split()), res.output
    assert not (tmp_path / "bad" / "state.json").exists()


def test_behaviour_file_errors_exit_2(target, tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "ok", "text": " Paris"}\n{"id": "empty", "text": ""}\n')
    res = _run("--behaviours", str(bad), "--out", str(tmp_path / "bad"))
    assert res.exit_code == 2 and "line 2" in res.output and "non-empty" in res.output, res.output
    res = _run("--behaviours", str(bad), "--behaviour", " Paris", "--out", str(tmp_path / "bad"))
    assert res.exit_code == 2 and "exactly one of --behaviour" in " ".join(res.output.split()), res.output
