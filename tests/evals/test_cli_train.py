"""``logitpred helpers train``: checkpoint and thread options, resume through the CLI, bad values exit 2."""

from __future__ import annotations

from typer.testing import CliRunner

from evals.cli import app
from tasks.io import read_json

runner = CliRunner()
TINY = ["helpers", "train", "--name", "cli-ckpt", "--corpus", "wiki", "--steps", "4", "--batch-size", "2",
        "--context", "16", "--hidden", "32", "--layers", "1"]


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_checkpoints_then_resume(data_home):
    from predictors.model import trained_helper_dir

    code, out = invoke(*TINY, "--checkpoint-every", "2")
    assert code == 0, out
    dest = trained_helper_dir("cli-ckpt")
    assert "checkpoints:" in out and (dest / "checkpoints" / "step-000002" / "config.json").is_file()
    assert read_json(dest / "logitpred-helper.json")["threads"] == 1
    code, out = invoke(*TINY)  # a fresh run over a helper with checkpoints is refused, naming the way out
    assert code == 2 and "--resume" in out
    code, out = invoke(*TINY, "--checkpoint-every", "2", "--resume")
    assert code == 0, out


def test_bad_values_exit_2(data_home, tiny_suite):
    code, out = invoke(*TINY, "--checkpoint-every", "-1")
    assert code == 2 and "--checkpoint-every must be >= 0" in out
    code, out = invoke(*TINY, "--threads", "0")
    assert code == 2 and "--threads must be >= 1" in out
    code, out = invoke(*TINY, "--name", "cli-none", "--resume")
    assert code == 2 and "nothing to resume" in out
    # a helper name is a folder name: '..' or '/' would write outside the helpers folder, a long one raised OSError
    for bad in ("../escaped", "a/b", "x" * 300, ".hidden"):
        code, out = invoke(*TINY, "--name", bad)
        assert code == 2 and "is not a plain name" in out, (bad, out)
    assert not (data_home / "escaped").exists() and not (data_home / "helpers" / "a").exists()
    code, out = invoke("predict", "--suite", "tiny", "-p", "tiny-helper", "-O", "name=../escaped", "-o", "x.jsonl")
    assert code == 2 and "is not a plain name" in out
