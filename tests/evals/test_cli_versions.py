"""``logitpred versions build | approve | report`` on the real SmolLM2 quantization series over the tiny suite, and
bad input (exit 2 naming the version, approval registry unchanged)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evals.cli import app
from tests.tasks.versions_fixtures import bad_series, quant_series, series_folder, tiny_folder

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def series(tiny_suite):
    """The built series file, with an empty approval registry for the test (removed afterwards)."""
    from predictors.approval import registry_path

    quant_series(tiny_suite)
    registry_path().unlink(missing_ok=True)
    yield series_folder() / "series.yaml"
    registry_path().unlink(missing_ok=True)


def test_build_approve_report(series):
    from scipy.stats import entropy

    from evals.versions import load_built
    from tasks.paths import results_dir
    from tasks.versions import load_series

    code, out = invoke("versions", "build", series)  # cached truth is reused, hash-checked
    assert code == 0 and "version:f32" in out and "int8-dynamic" in out
    code, out = invoke("versions", "approve", series, "f32", "--max-kl", "0.5")
    assert code == 1 and "NOT approved" in out
    code, out = invoke("versions", "approve", series, "f32", "--max-kl", "50")
    assert code == 0 and "version:f32 approved at level 1" in out
    code, out = invoke("versions", "report", series)
    assert code == 0, out
    rep = json.loads(sorted((results_dir() / "versions").glob("*-q/report.json"))[-1].read_text())
    # drift per consecutive pair, both splits, against scipy's relative entropy
    built = load_built(load_series(series))
    assert [(d["from"], d["to"], d["split"]) for d in rep["drift"]] == [
        ("f32", "bf16", "practice"), ("f32", "bf16", "sealed"), ("bf16", "int8", "practice"), ("bf16", "int8", "sealed")]
    d = rep["drift"][3]
    pa, pb = (np.exp(built[n]["tiny"].truth_split("sealed")[1].astype(np.float64)) for n in ("bf16", "int8"))
    assert d["kl_nats"][0] == pytest.approx(np.mean([entropy(b, a) for a, b in zip(pa, pb, strict=True)]), rel=1e-4)
    # a gate verdict per version, from the gate's own run records
    assert set(rep["gates"]) == {"f32", "bf16", "int8"}
    for g in rep["gates"].values():
        assert g["verdict"] in ("PASS", "FAIL") and g["suites"][0]["checks"][0]["metric"] == "kl_nats"
        assert (results_dir() / g["suites"][0]["run_id"] / "summary.json").is_file()
    # the approved float32 version predicts bfloat16 far better than the unigram; bfloat16 is refused unapproved
    first, second = rep["previous_as_predictor"]
    assert first["version"] == "version:f32" and first["approved"] is True
    assert first["gain_kl"][1] > 0 and first["version_kl"][0] < first["baseline_kl"][0]
    assert "refused" in second and "version:bf16" in second["refused"]
    assert "Drift KL" in out and "refused: not approved" in out
    # with the opt-in the unapproved version runs, marked
    code, out = invoke("versions", "report", series, "--allow-unapproved", "--no-gate")
    rep = json.loads(sorted((results_dir() / "versions").glob("*-q/report.json"))[-1].read_text())
    assert code == 0 and rep["previous_as_predictor"][1]["approved"] is False and "no (exploratory)" in out


@pytest.mark.parametrize("case", ["missing", "tokenizer"])
def test_bad_version_exits_2_naming_it(series, tmp_path, tiny_suite, case):
    from predictors.approval import registry_path

    code, _ = invoke("versions", "approve", series, "f32", "--max-kl", "50", "--approver", "uniform")
    assert code == 0
    before = registry_path().read_bytes()
    model = (tmp_path / "gone" if case == "missing"
             else tiny_folder(tmp_path / "m", tiny_suite.path / "tokenizer", vocab=64, extra_token=True))
    bad = bad_series(tmp_path, str(model))
    for cmd in ("build", "report"):
        code, out = invoke("versions", cmd, bad)
        assert code == 2 and "version 'rung2'" in out and "approval registry is unchanged" in out
    assert registry_path().read_bytes() == before


def test_bad_series_file_exits_2(tmp_path):
    path = Path(tmp_path / "s.yaml")
    path.write_text("version: 1\nname: s\nsuites: [tiny]\nversions:\n  - {name: a, model: default}\n"
                    "  - {name: a, preset: 'smollm2:int8'}\n")
    code, out = invoke("versions", "build", path)
    assert code == 2 and "version 'a' is listed twice" in out
    code, out = invoke("versions", "approve", path.with_name("nope.yaml"), "a")
    assert code == 2


def test_version_predictor_through_the_ordinary_commands(series, tmp_path):
    # tiny's target is the float32 version: it may not predict itself
    code, out = invoke("predict", "-p", "version:f32", "--suite", "tiny", "--split", "practice", "--out",
                       tmp_path / "p.jsonl", "--allow-unapproved")
    assert code == 2 and "may never run the target" in out
    # an unapproved version is refused, then runs exploratory with the opt-in, marked unapproved
    code, out = invoke("run", "-p", "version:bf16", "--suite", "tiny", "--split", "practice")
    assert code == 2 and "version:bf16" in out
    code, out = invoke("run", "-p", "version:bf16", "--suite", "tiny", "--split", "practice", "--allow-unapproved")
    assert code == 0 and "unapproved" in out
