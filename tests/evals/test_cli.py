"""The CLI end to end on the tiny suite: build (reuse), predict, score (with bad lines), leaderboard ordering."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.replace("│", " ").split())  # rich wraps long lines in boxes


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
    code, out = invoke("truth", "--suite", "tiny", "--verify", "--recompute", "--batch-size", "3")
    assert code == 0 and "float32 on cpu) verifies against the sealed commitment" in out, out
    assert "0 rows over the tolerance 0.0001" in out
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
    assert code == 2 and "missing.jsonl" in out.replace(" ", "") and "does not exist" in out  # bad input: exit 2


def test_unknown_predictor_and_suite(tiny_suite, tmp_path):
    code, out = invoke("predict", "-p", "oracle", "-s", "tiny", "-o", str(tmp_path / "x.jsonl"))
    assert code == 2 and "unknown predictor 'oracle'" in out and "uniform" in out
    code, out = invoke("leaderboard", "-s", "nosuite")
    assert code == 1 and "no scored runs" in out
    code, out = invoke("predict", "-p", "uniform", "-s", "nosuite", "-o", str(tmp_path / "x.jsonl"))
    assert code == 2 and "logitpred suite build nosuite" in out


def test_bad_arguments_exit_2_naming_the_argument(tiny_suite, tmp_path):
    """One place validates arguments (evals/cli/common.py): nothing is loaded or written before they are checked."""
    out_file = tmp_path / "x.jsonl"
    cases = [
        (["predict", "-p", "uniform", "-s", "tiny", "--split", "foo", "-o", str(out_file)], "'--split'"),
        (["run", "-s", "tiny", "-p", "uniform", "--split", "foo"], "'--split'"),
        (["score", str(out_file), "-s", "tiny", "--split", "sealed"], "does not exist"),
        (["suite", "build", "x", "--corpus", "wiki", "--practice", "0"], "'--practice'"),
        (["suite", "build", "x", "--corpus", "wiki", "--heldout-fraction", "1.5"], "not strictly between 0 and 1"),
        (["truth", "-s", "tiny", "--batch-size", "0"], "'--batch-size'"),
        (["truth", "-s", "tiny", "--device", "tpu"], "'--device'"),
        (["truth", "-s", "tiny", "--dtype", "int3"], "'--dtype'"),
        (["truth", "-s", "tiny", "--recompute"], "give it with --verify"),
        (["truth", "-s", "tiny", "--verify", "--recompute", "--dtype", "bfloat16"], "commitment is for float32"),
        (["truth", "-s", "tiny", "--device", "cuda"], "torch sees no GPU"),
        (["predict", "-p", "uniform", "-s", "tiny", "-o", str(out_file), "-O", "a=1", "-O", "a=2"], "given twice"),
    ]
    for args, message in cases:
        code, out = invoke(*args)
        assert code == 2, (args, out)
        assert message in out, (args, out)
    assert not out_file.exists()


def test_meta_file_with_duplicate_key_is_bad_input(tiny_suite, tmp_path):
    ids = [p.id for p in tiny_suite.prompts("practice")]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt_id": ids[0], "top": {" the": 0.3}}) + "\n")
    (tmp_path / "p.jsonl.meta.json").write_text('{"name": "a", "name": "b"}')
    code, out = invoke("score", str(path), "-s", "tiny")
    assert code == 2 and "duplicate key 'name'" in out


def test_serve_checks_origins_against_its_public_url(tiny_suite, tmp_path):
    """`serve --url` reaches the app: behind a proxy (Host 127.0.0.1:PORT) the public origin is the one compared."""
    import httpx

    from evals.human.client import serve

    url = "https://predict.example.org"
    form = {"token": "t", "form_token": "f"}
    with serve("tiny", f"sqlite:///{tmp_path / 'h.sqlite'}", options=("--url", url)) as (base, _):
        def join(origin: str) -> httpx.Response:
            return httpx.post(f"{base}/join", data=form, headers={"origin": origin})

        foreign = join("https://evil.example")
        assert foreign.status_code == 403 and "is not this server&#39;s address " + url in foreign.text
        assert "is not this server" in join(base).text  # the upstream address is not the public one
        public = join(url)  # passes the origin check; refused later only for the made-up login form token
        assert public.status_code == 403 and "is not this server" not in public.text
        assert "login form expired" in public.text
