"""The inspect-ai layer end to end on the tiny suite: the ``predictor/NAME`` provider (resolved through the package's
``inspect_ai`` entry point), the task, the scorer's per-sample metrics against a direct computation, what a predictor
receives, the sealed holdout count, that no sealed truth value reaches a log, and the approval rule: the real
unapproved tiny helper refused, or run exploratory with ``allow_unapproved`` and marked so in the log."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from inspect_ai.model import ModelOutput, ModelUsage, get_model

from evals import holdout
from evals.metrics import per_prompt_metrics
from evals.predictability import SEALED_OMIT, predictability
from evals.stats import bootstrap_ci
from predictors import Prediction, PredictorContext, create, densify, register, view
from predictors.approval import ApprovalError, declare_level0, registry_path, system_identity
from predictors.baselines import RestOnly
from tests.evals.leaks import numbers_in, truth_numbers

REPO = Path(__file__).resolve().parents[2]
SEEN: list = []  # what the spy predictor was given


@register("test-spy")
def _spy(ctx, **options):
    class Spy(RestOnly):
        def predict(self, prompts):
            SEEN.extend(prompts)
            return super().predict(prompts)

    return Spy("test-spy", "unigram")


declare_level0("test-spy")  # it runs no model: the unigram of the train text


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    return tmp_path


@pytest.fixture()
def no_approvals(data_home):
    """An empty approval registry: the tiny helper is unapproved."""
    registry_path().unlink(missing_ok=True)
    yield registry_path()
    registry_path().unlink(missing_ok=True)


def _run(task, model, log_dir, **kw):
    [log] = inspect_eval(task, model=model, log_dir=str(log_dir), display="none", **kw)
    return log


def test_practice_eval_matches_direct_scoring(tiny_suite, isolated):
    log = _run(predictability(suite="tiny", split="practice"), "predictor/unigram", isolated / "logs")
    assert log.status == "success" and len(log.samples) == 6
    ids, logp, nxt = tiny_suite.truth_split("practice")
    q = np.stack([densify(Prediction(i, {}, "unigram"), tiny_suite.vocabulary, tiny_suite.background) for i in ids])
    direct = per_prompt_metrics(logp, q, nxt)
    got = {s.id: s.scores["next_token_metrics"].value for s in log.samples}
    for i, pid in enumerate(ids):
        for k in direct:
            assert got[pid][k] == pytest.approx(direct[k][i], rel=1e-9, abs=1e-12), (pid, k)
    # aggregates: inspect's mean and stderr, and our bootstrap CI, against numpy/scipy on the same values
    metrics = {s.name: s.metrics for s in log.results.scores}
    kl = direct["kl_nats"]
    assert metrics["kl_nats"]["mean"].value == pytest.approx(kl.mean())
    assert metrics["kl_nats"]["stderr"].value == pytest.approx(kl.std(ddof=1) / np.sqrt(kl.size))
    _, low, high = bootstrap_ci(kl)
    assert metrics["kl_nats"]["ci95_low"].value == pytest.approx(low)
    assert metrics["kl_nats"]["ci95_high"].value == pytest.approx(high)
    assert log.eval.metadata["commitment"] == tiny_suite.commitment
    # a level-0 predictor: every sample and score says approved, and the results' `approved` mean is 1
    level0 = {"approved": True, "exploratory": False, "level": 0, "approval_key": None,
              "approval": "'unigram' is level 0: corpus statistics, baselines and humans run no model"}
    assert all(s.metadata["approval"] == level0 for s in log.samples)
    assert all(s.scores["next_token_metrics"].metadata == {"approval": level0} for s in log.samples)
    assert all(s.scores["next_token_metrics"].explanation is None for s in log.samples)
    assert metrics["approved"]["mean"].value == 1.0
    # the sample carries no truth: a system message naming the suite, the prompt text, an empty target
    prompts = {p.id: p for p in tiny_suite.prompts("practice")}
    for s in log.samples:
        assert [m.role for m in s.input] == ["system", "user"] and s.input[1].text == prompts[s.id].text
        assert s.target == "" and "next_token_id" not in json.dumps(s.metadata)


def test_predictor_receives_only_the_prompt_view(tiny_suite, isolated):
    SEEN.clear()
    log = _run(predictability(suite="tiny", split="practice"), "predictor/test-spy", isolated / "logs")
    assert log.status == "success"
    want = {p.id: p for p in tiny_suite.prompts("practice")}
    assert sorted(v.id for v in SEEN) == sorted(want)
    for v in SEEN:
        assert set(vars(v)) == {"id", "text", "token_ids"}  # nothing else travels
        assert v.text == want[v.id].text and v.token_ids == want[v.id].token_ids


def test_unscored_when_model_is_not_a_predictor(tiny_suite, isolated):
    out = ModelOutput.from_content("mockllm", " the")
    out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)  # else mockllm asks tiktoken (offline)
    model = get_model("mockllm/model", custom_outputs=[out] * 6)
    log = _run(predictability(suite="tiny", split="practice"), model, isolated / "logs")
    scores = [s.scores["next_token_metrics"] for s in log.samples]
    assert all(np.isnan(s.value) and "predictor/NAME" in s.explanation for s in scores)


def test_sealed_from_the_inspect_cli_counts_refuses_and_leaks_no_truth(tiny_suite, isolated):
    env = {**os.environ, "XDG_DATA_HOME": str(isolated / "xdg"), "LOGITPRED_LEDGER": str(isolated / "ledger.jsonl")}
    cmd = [str(Path(sys.executable).parent / "inspect"), "eval", "evals/predictability.py", "-T", "suite=tiny",
           "-T", "split=sealed", "-T", "max_submissions=1", "--model", "predictor/unigram", "--log-format", "json",
           "--log-dir", str(isolated / "logs"), "--display", "plain"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert holdout.count(tiny_suite, "unigram") == 1
    [path] = list((isolated / "logs").glob("*.json"))
    text = path.read_text()
    log = read_eval_log(str(path))
    assert log.status == "success" and len(log.samples) == 6
    assert not set(SEALED_OMIT) & set(log.samples[0].scores["next_token_metrics"].value)
    leaked = numbers_in(text) & truth_numbers(tiny_suite, "sealed")
    assert not leaked, f"sealed truth values in the log: {sorted(leaked)[:5]}"
    assert len(text) < 400_000  # per-prompt scalars and top candidates, not distributions
    # the second sealed run is past the limit: refused before any prediction is scored
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # inspect exits 0 anyway
    [refused] = [read_eval_log(str(p)) for p in (isolated / "logs").glob("*.json") if p != path]
    assert refused.status == "error" and "limit 1" in refused.error.message
    assert holdout.count(tiny_suite, "unigram") == 1


def test_the_leak_check_can_fail(tiny_suite, isolated):
    """On practice the realized-token loss of the target is logged, and the same check finds it."""
    log = _run(predictability(suite="tiny", split="practice"), "predictor/unigram", isolated / "logs",
               log_format="json")
    text = Path(log.location).read_text()
    assert numbers_in(text) & truth_numbers(tiny_suite, "practice")


def test_an_unapproved_helper_is_refused_before_any_sample(tiny_suite, tiny_helper, no_approvals, isolated):
    for split in ("practice", "sealed"):
        with pytest.raises(ApprovalError) as err:
            _run(predictability(suite="tiny", split=split), "predictor/tiny-helper", isolated / "logs")
        msg = str(err.value)
        assert "gated evaluation refused: 'tiny-helper'" in msg and "`logitpred approve tiny-helper`" in msg
        assert "-M allow_unapproved=true" in msg
    assert holdout.count(tiny_suite, "tiny-helper") == 0  # refused before the sealed submission was counted
    assert not list((isolated / "logs").glob("*"))


def test_allow_unapproved_runs_exploratory_and_the_log_says_so(tiny_suite, tiny_helper, no_approvals, isolated):
    log = _run(predictability(suite="tiny", split="practice"), "predictor/tiny-helper", isolated / "logs",
               model_args={"allow_unapproved": True})
    assert log.status == "success" and len(log.samples) == 6
    assert log.eval.model_args == {"allow_unapproved": True}
    key = system_identity("tiny-helper")["key"]
    want = {"approved": False, "exploratory": True, "level": None, "approval_key": None,
            "approval": f"'tiny-helper' (identity {key}) has no valid approval record"}
    for s in log.samples:
        assert s.metadata["approval"] == want
        sc = s.scores["next_token_metrics"]
        assert sc.metadata == {"approval": want}
        assert sc.explanation == f"UNAPPROVED predictor, exploratory run: {want['approval']}"
        assert s.scores["approved"].value == 0.0 and s.scores["approved"].answer == "UNAPPROVED (exploratory)"
    assert {m.name: m.metrics for m in log.results.scores}["approved"]["mean"].value == 0.0
    # and the scores are the helper's: KL of its own distributions, computed directly
    ctx = PredictorContext.from_suite(tiny_suite)
    helper = create("tiny-helper", ctx, allow_unapproved=True)
    ids, logp, nxt = tiny_suite.truth_split("practice")
    prompts = {p.id: view(p) for p in tiny_suite.prompts("practice")}
    direct = per_prompt_metrics(logp, helper.distributions([prompts[i] for i in ids]), nxt)
    got = {s.id: s.scores["next_token_metrics"].value["kl_nats"] for s in log.samples}
    assert [got[i] for i in ids] == pytest.approx(list(direct["kl_nats"]), rel=1e-6)


def test_inspect_cli_refuses_then_counts_the_exploratory_sealed_run_under_the_cli_label(
        tiny_suite, tiny_helper, no_approvals, isolated):
    """The brief's command, from the inspect CLI: refused without the opt-in (nothing counted); with
    ``-M allow_unapproved=true`` it runs, and its sealed submission is counted under ``tiny-helper``, the label a
    ``logitpred run -p tiny-helper --allow-unapproved`` scoring is counted under (``evals.scoring.score``)."""
    from evals.scoring import predict_validated, score

    env = {**os.environ, "XDG_DATA_HOME": str(isolated / "xdg"), "LOGITPRED_LEDGER": str(isolated / "ledger.jsonl")}
    cmd = [str(Path(sys.executable).parent / "inspect"), "eval", "evals/predictability.py", "-T", "suite=tiny",
           "-T", "split=sealed", "--model", "predictor/tiny-helper", "--log-format", "json",
           "--log-dir", str(isolated / "logs"), "--display", "plain"]
    refused = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "gated evaluation refused: 'tiny-helper'" in refused.stderr + refused.stdout
    assert holdout.count(tiny_suite, "tiny-helper") == 0
    ran = subprocess.run([*cmd, "-M", "allow_unapproved=true"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    [log] = [read_eval_log(str(p)) for p in (isolated / "logs").glob("*.json")]
    assert log.status == "success" and log.eval.model_args == {"allow_unapproved": True}
    assert all(s.metadata["approval"]["exploratory"] is True for s in log.samples)
    assert holdout.count(tiny_suite, "tiny-helper") == 1
    helper = create("tiny-helper", PredictorContext.from_suite(tiny_suite), allow_unapproved=True)
    score(tiny_suite, "sealed", predict_validated(tiny_suite, "sealed", helper),
          predictor={"name": "tiny-helper", **helper.approval_meta}, write=False)
    assert holdout.count(tiny_suite, "tiny-helper") == 2  # one ledger, one label
