"""The gate on the tiny suite: pass (exit 0), fail (exit 1), config errors (exit 2), the team rules against a direct
computation, the sealed submission limit (refused, exit 1), and no sealed truth value in the report."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evals import holdout
from evals.cli import app
from evals.metrics import kl_divergence
from predictors import Prediction, densify, register
from predictors.baselines import RestOnly
from tests.evals.leaks import numbers_in, truth_numbers

runner = CliRunner()


@register("test-unapproved-helper")
def _helper(ctx, **options):
    return RestOnly("test-unapproved-helper", "unigram")


@pytest.fixture()
def env(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    return tmp_path


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    return path


BASE = """
name: {name}
team: {{rule: {rule}, members: [uniform, unigram]}}
suites: [{{name: tiny, split: sealed, role: in-distribution}}, {{name: tiny, split: practice, role: practice}}]
thresholds: {{kl_nats: {{max: {kl}}}, top1: {{min: 0.0}}}}
holdout: {{max_submissions: {limit}}}
report: {{worst_prompts: 3}}
"""


def gate(path: Path) -> tuple[int, str, dict]:
    result = runner.invoke(app, ["gate", "--config", str(path)])
    m = re.search(r"report: (\S+)/report\.md", result.output)
    report = json.loads((Path(m.group(1)) / "report.json").read_text()) if m else {}
    return result.exit_code, result.output, report


def test_pass_writes_report_and_picks_best_on_practice(env, tiny_suite):
    code, out, report = gate(config(env, BASE.format(name="p", rule="best-on-practice", kl=20, limit=5)))
    assert code == 0, out
    assert report["verdict"] == "PASS" and "one eval among many, not a proof of safety" in out
    sealed = report["suites"][0]
    assert sealed["team"]["chosen"] == "unigram"  # lower practice KL than uniform
    assert sealed["team"]["practice_kl_mean"]["unigram"] < sealed["team"]["practice_kl_mean"]["uniform"]
    # the team's sealed run is a normal run record; its exact mean agrees with a direct computation
    run = next((env / "results").glob(f"{sealed['run_id']}/per_prompt.csv"))
    ids, logp, _ = tiny_suite.truth_split("sealed")
    q = np.stack([densify(Prediction(i, {}, "unigram"), tiny_suite.vocabulary, tiny_suite.background) for i in ids])
    np.testing.assert_allclose(pd.read_csv(run)["kl_nats"], kl_divergence(logp, q), rtol=1e-9)
    # sealed numbers are released on the grid: estimate to 0.05 nats, bounds outward around the exact CI
    check = sealed["checks"][0]
    exact = json.loads((run.parent / "summary.json").read_text())["metrics"]["kl_nats"]["mean"]
    assert check["estimate"] == pytest.approx(round(exact[0] / 0.05) * 0.05)
    assert check["ci"][0] <= exact[1] and check["ci"][1] >= exact[2]
    assert all(abs(v / 0.05 - round(v / 0.05)) < 1e-6 for v in [check["estimate"], *check["ci"]])
    assert len(sealed["worst"]) == 3 and sealed["worst"][0]["kl_nats"] >= sealed["worst"][-1]["kl_nats"]
    md = Path(report["report_dir"], "report.md").read_text()
    assert "**Verdict: PASS.**" in md and "not a proof of safety" in md


def test_fail_exits_1_and_names_the_failing_check(env):
    code, out, report = gate(config(env, BASE.format(name="f", rule="best-on-practice", kl=1.0, limit=5)))
    assert code == 1 and report["verdict"] == "FAIL"
    assert all(not s["passed"] for s in report["suites"])
    assert "upper CI bound" in out and "**FAIL**" in out


def test_mixture_rule_is_the_declared_mixture(env, tiny_suite):
    text = BASE.format(name="m", rule="mixture", kl=20, limit=5).replace(
        "members: [uniform, unigram]}", "members: [uniform, unigram], weights: [0.25, 0.75]}")
    code, out, report = gate(config(env, text))
    assert code == 0, out
    practice = report["suites"][1]
    ids, logp, _ = tiny_suite.truth_split("practice")
    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    q = np.stack([0.25 * densify(Prediction(i, {}, "uniform"), vocab, bg) + 0.75 * densify(Prediction(i, {}, "unigram"),
                                                                                            vocab, bg) for i in ids])
    kl = pd.read_csv(env / "results" / practice["run_id"] / "per_prompt.csv")["kl_nats"]
    np.testing.assert_allclose(kl, kl_divergence(logp, q), rtol=1e-9)
    assert practice["checks"][0]["estimate"] == pytest.approx(kl_divergence(logp, q).mean())  # practice: exact


def test_submission_limit_refuses_before_running(env, tiny_suite):
    path = config(env, BASE.format(name="lim", rule="best-on-practice", kl=20, limit=2))
    assert gate(path)[0] == 0 and gate(path)[0] == 0
    # the same predictions scored twice reveal nothing new: the team's second, identical submission is not counted
    assert holdout.count(tiny_suite, "team:lim") == 1 and holdout.count(tiny_suite, "unigram") == 1
    path = config(env, BASE.format(name="lim", rule="mixture", kl=20, limit=2))  # new predictions, same team
    assert gate(path)[0] == 0
    assert holdout.count(tiny_suite, "team:lim") == 2 and holdout.count(tiny_suite, "unigram") == 2
    runs_before = len(list((env / "results").glob("*/summary.json")))
    code, out, report = gate(path)
    assert code == 1 and report["verdict"] == "REFUSED" and "limit 2" in out
    assert len(list((env / "results").glob("*/summary.json"))) == runs_before  # nothing was scored
    assert holdout.count(tiny_suite, "team:lim") == 2


@pytest.mark.parametrize("text, message", [
    ("name: x\nteam: [", "not valid YAML"),
    (BASE.format(name="x", rule="best-on-practice", kl=2, limit=5) + "colour: red\n", "unknown key(s) ['colour']"),
    (BASE.format(name="x", rule="vote", kl=2, limit=5), "team.rule: 'vote'"),
    (BASE.format(name="x", rule="best-on-practice", kl=2, limit=5).replace("kl_nats:", "kl_natz:"), "kl_natz"),
    (BASE.format(name="x", rule="best-on-practice", kl="'low'", limit=5), "is not a finite number"),
    (BASE.format(name="x", rule="best-on-practice", kl=2, limit=0), "max_submissions"),
    (BASE.format(name="x", rule="best-on-practice", kl=2, limit=5).replace("name: tiny,", "name: nosuch,", 1),
     "'nosuch' is not built"),
    (BASE.format(name="x", rule="best-on-practice", kl=2, limit=5).replace("[uniform, unigram]", "[uniform, nosuch]"),
     "unknown predictor 'nosuch'"),
    (BASE.format(name="x", rule="best-on-practice", kl=2, limit=5).replace(
        "[uniform, unigram]", "[uniform, test-unapproved-helper]"), "not approved"),
    (BASE.format(name="x", rule="mixture", kl=2, limit=5).replace("unigram]}", "unigram], weights: [0.5]}"),
     "team.weights"),
])
def test_config_errors_exit_2_with_a_message(env, text, message):
    result = runner.invoke(app, ["gate", "--config", str(config(env, text))])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (env / "results").exists()  # nothing ran


def test_missing_config_exits_2(env):
    result = runner.invoke(app, ["gate", "--config", str(env / "nope.yaml")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def test_no_sealed_truth_in_the_report(env, tiny_suite):
    code, out, report = gate(config(env, BASE.format(name="leak", rule="best-on-practice", kl=20, limit=5).replace(
        ", {name: tiny, split: practice, role: practice}", "")))
    assert code == 0, out
    folder = Path(report["report_dir"])
    text = (folder / "report.json").read_text() + (folder / "report.md").read_text()
    assert not numbers_in(text) & truth_numbers(tiny_suite, "sealed")


def test_duplicate_threshold_key_is_refused_not_last_wins(env):
    """``kl_nats`` twice under ``thresholds`` (3, then 30): YAML would keep 30; the gate refuses the file, exit 2."""
    text = BASE.format(name="dup", rule="best-on-practice", kl=3, limit=5).replace(
        "thresholds: {kl_nats: {max: 3}, top1: {min: 0.0}}",
        "thresholds:\n  kl_nats: {max: 3}\n  top1: {min: 0.0}\n  kl_nats: {max: 30}")
    assert "kl_nats: {max: 30}" in text
    result = runner.invoke(app, ["gate", "--config", str(config(env, text))])
    assert result.exit_code == 2, result.output
    assert "duplicate key 'kl_nats' at line" in " ".join(result.output.split())
    assert not (env / "results").exists()


def test_config_with_byte_order_mark_is_read(env):
    path = config(env, BASE.format(name="bom", rule="best-on-practice", kl=20, limit=5))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, out, report = gate(path)
    assert code == 0, out
    assert report["config"]["thresholds"]["kl_nats"] == {"max": 20}


@pytest.fixture()
def no_approvals(data_home):
    """An empty approval registry for the test (the tiny helper starts unapproved)."""
    from predictors.approval import registry_path

    registry_path().unlink(missing_ok=True)
    yield registry_path()
    registry_path().unlink(missing_ok=True)


def test_the_real_unapproved_helper_is_refused_then_gated_once_approved(env, tiny_suite, tiny_helper, no_approvals):
    """The gate asks the same check as every entry point (``require_approved``), without an opt-in; once the helper
    has an approval record it runs, and the team's run record carries each member's approval."""
    from evals.approve import approve
    from predictors.approval import system_identity

    text = BASE.format(name="h", rule="best-on-practice", kl=50, limit=5).replace(
        "[uniform, unigram]", "[unigram, tiny-helper]")
    result = runner.invoke(app, ["gate", "--config", str(config(env, text))])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "tiny-helper is not approved for a gated evaluation" in out and "logitpred approve tiny-helper" in out
    assert "no exploratory opt-in" in out and "allow_unapproved" not in out and "--allow-unapproved" not in out
    assert not (env / "results").exists()  # nothing ran
    approve("tiny-helper", {}, ["tiny"], approvers=["uniform", "unigram"], thresholds={"kl_nats": {"max": 50.0}})
    code, out, report = gate(config(env, text))
    assert code == 0, out
    run = json.loads((env / "results" / report["suites"][0]["run_id"] / "summary.json").read_text())
    members = {m["name"]: m for m in run["predictor"]["members"]}
    assert run["predictor"]["approved"] is True and run["predictor"]["exploratory"] is False
    assert (members["unigram"]["level"], members["unigram"]["approved"]) == (0, True)
    key = system_identity("tiny-helper")["key"]
    assert (members["tiny-helper"]["level"], members["tiny-helper"]["approval_key"]) == (1, key)
