"""The approval chain on real models: level 0 by definition, a helper refused until approved, approval evidence checked
against a direct computation, revocation, levels, the CLI gate, and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy
from typer.testing import CliRunner

from evals.approve import approve
from evals.cli import app
from predictors.approval import (
    ApprovalError,
    approval_status,
    load_records,
    revoke,
    system_identity,
)
from predictors.model import HelperError

runner = CliRunner()
LENIENT = {"kl_nats": {"max": 50.0}}  # a 3-step helper is near-uniform; the mechanism, not the bar, is under test
FAST = ["uniform", "unigram"]


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize("name, options", [
    ("uniform", None), ("unigram", None), ("ngram", None), ("suffix", None), ("mixture", None), ("human:alice", None),
    ("human", None), ("human-team", None), ("file:preds.jsonl", None), ("mixture", {"members": ["ngram", "unigram"]}),
])
def test_level0_is_approved_by_definition(name, options, registry):
    ok, reason = approval_status(name, options)
    assert ok and "level 0" in reason
    assert not registry.exists()


@pytest.mark.parametrize("name", ["humanoid", "human-like-model", "filer"])
def test_a_human_looking_name_is_not_level0(name, registry):
    ok, _ = approval_status(name, None)
    assert not ok


def test_a_helper_is_refused_without_a_record(registry, tiny_helper):
    ok, reason = approval_status("tiny-helper")
    assert not ok and "logitpred approve tiny-helper" in reason
    ok, reason = approval_status("mixture", {"members": ["ngram", "tiny-helper"]})
    assert not ok and "no valid approval record" in reason  # a mixture holding a helper is not level 0


def test_identity_follows_the_weights_not_the_name(tiny_helper):
    by_name = system_identity("tiny-helper")
    by_path = system_identity("model", {"path": str(tiny_helper)})
    assert by_name["weights_sha256"] == by_path["weights_sha256"] and by_name["key"] == by_path["key"]
    assert system_identity("tiny-helper", {"batch_size": 2, "cache": False})["key"] == by_name["key"]
    # an output-changing setting makes another system: an approval of one does not cover the other
    assert system_identity("tiny-helper", {"smoothing": 0.1})["key"] != by_name["key"]


def test_approve_evidence_and_revoke(registry, tiny_suite, tiny_helper):
    outcome = approve("tiny-helper", {}, ["tiny"], approvers=FAST, thresholds=LENIENT)
    assert outcome.approved and outcome.level == 1
    rec = load_records()[-1]
    assert rec.key == system_identity("tiny-helper")["key"] and rec.level == 1 and rec.valid
    assert rec.suites == [{"name": "tiny", "version": tiny_suite.version, "commitment": tiny_suite.commitment}]
    assert rec.thresholds == {"kl_nats.mean.max": 50.0}
    ok, reason = approval_status("tiny-helper")
    assert ok and "level 1" in reason
    # the evidence: recompute the chosen approver's sealed mean KL against the helper's own outputs directly
    from predictors import PredictorContext, create, densify, view

    run = json.loads((Path(rec.evidence[0]) / "summary.json").read_text())
    chosen = run["predictor"]["name"]
    assert chosen in FAST and rec.scores["tiny"]["approver"] == chosen
    ctx = PredictorContext.from_suite(tiny_suite)
    prompts = [view(p) for p in tiny_suite.prompts("sealed")]
    helper_q = create("tiny-helper", ctx).distributions(prompts)
    approver_q = [densify(x, ctx.vocabulary, ctx.background) for x in create(chosen, ctx).predict(prompts)]
    kl = np.mean([entropy(h, a) for h, a in zip(helper_q, approver_q, strict=True)])
    assert rec.scores["tiny"]["checks"][0]["estimate"] == pytest.approx(kl, rel=1e-4)
    # the target's truth played no part: the approver's KL against the target differs
    target_p = np.exp(tiny_suite.truth_split("sealed")[1].astype(np.float64))
    assert abs(np.mean([entropy(t, a) for t, a in zip(target_p, approver_q, strict=True)]) - kl) > 1e-3
    revoke(rec.key[:8], "test")
    assert not approval_status("tiny-helper")[0]
    assert load_records()[-1].revoke_reason == "test" and not load_records()[-1].valid


def test_failed_threshold_writes_nothing_to_the_registry(registry, tiny_suite, tiny_helper):
    outcome = approve("tiny-helper", {}, ["tiny"], approvers=FAST, thresholds={"kl_nats": {"max": 1e-6}})
    assert not outcome.approved and outcome.record is None
    assert not registry.exists()
    assert json.loads(open(outcome.report).read())["approved"] is False  # the failed attempt is still reported


def test_levels_chain(registry, tiny_suite, tiny_helper, tmp_path):
    from predictors.train_helper import TrainConfig, train_helper

    second = tmp_path / "second"
    train_helper(second, TrainConfig(corpora=("wiki",), steps=2, batch_size=2, context=32, hidden=32, layers=1,
                                     heads=2, warmup=1, seed=1, eval_every=2, eval_batches=1))
    with pytest.raises(ApprovalError, match="not approved itself"):
        approve("model", {"path": str(second)}, ["tiny"], approvers=["tiny-helper"], thresholds=LENIENT)
    assert not registry.exists()
    approve("tiny-helper", {}, ["tiny"], approvers=FAST, thresholds=LENIENT)
    outcome = approve("model", {"path": str(second)}, ["tiny"], approvers=["tiny-helper"], thresholds=LENIENT)
    assert outcome.approved and outcome.level == 2 and load_records()[-1].level == 2


@pytest.mark.parametrize("name, options, suites, error, match", [
    ("model", {"path": "/no/such/model.gguf"}, ["tiny"], HelperError, "does not exist"),
    ("ngram", {}, ["tiny"], ApprovalError, "nothing to approve"),
    ("tiny-helper", {}, ["no-such-suite"], ApprovalError, "is not built"),
    ("tiny-helper", {}, [], ApprovalError, "at least one suite"),
])
def test_bad_requests_write_nothing(registry, tiny_suite, tiny_helper, name, options, suites, error, match):
    with pytest.raises(error, match=match):
        approve(name, options, suites, approvers=FAST, thresholds=LENIENT)
    assert not registry.exists()


def test_a_suite_without_truth_is_refused(registry, tiny_suite, tiny_helper, target):
    import dataclasses

    from tasks import PRESETS, build_suite

    build_suite(dataclasses.replace(PRESETS["tiny"], name="notruth"), target.tokenizer, target.identity,
                target.vocab_size)
    with pytest.raises(ApprovalError, match="has no truth yet"):
        approve("tiny-helper", {}, ["notruth"], approvers=FAST, thresholds=LENIENT)
    assert not registry.exists()


def test_a_file_that_is_not_a_model(registry, tiny_suite, tmp_path):
    (tmp_path / "weights.gguf").write_text("not a model")
    with pytest.raises(HelperError, match="not a GGUF file"):
        approve("model", {"path": str(tmp_path / "weights.gguf")}, ["tiny"], approvers=FAST, thresholds=LENIENT)
    assert not registry.exists()


def test_cli_gate_explore_approve_list_revoke(registry, tiny_suite, tiny_helper, tmp_path):
    out_file = tmp_path / "helper.jsonl"
    code, out = invoke("predict", "-p", "tiny-helper", "-s", "tiny", "-o", str(out_file))
    assert code == 2 and "gated evaluation refused" in out and "logitpred approve tiny-helper" in out
    assert not out_file.exists()
    code, out = invoke("predict", "-p", "tiny-helper", "-s", "tiny", "-o", str(out_file), "--allow-unapproved")
    assert code == 0, out
    assert json.loads(open(str(out_file) + ".meta.json").read())["approved"] is False
    code, out = invoke("score", str(out_file), "-s", "tiny", "--name", "tiny-helper-explore")
    assert code == 0, out
    from evals.records import read_runs

    run = [r for r in read_runs() if r["predictor"].get("label") == "tiny-helper-explore"][-1]
    assert run["predictor"]["approved"] is False
    from evals.leaderboard import leaderboard

    board = leaderboard("tiny", "practice")
    assert not board.set_index("predictor").loc["tiny-helper-explore", "approved"]
    code, out = invoke("approve", "model", "-O", "path=/no/such/dir", "--suite", "tiny")
    assert code == 2 and "does not exist" in out and "nothing was written" in out and not registry.exists()
    code, out = invoke("approve", "tiny-helper", "--suite", "tiny", "--approver", "uniform", "--approver", "unigram",
                       "--max-kl", "1e-6")
    assert code == 1 and "NOT APPROVED" in out and not registry.exists()
    code, out = invoke("approve", "tiny-helper", "--suite", "tiny", "--approver", "uniform", "--approver", "unigram",
                       "--max-kl", "50")
    assert code == 0 and "APPROVED" in out, out
    key = system_identity("tiny-helper")["key"]
    code, out = invoke("approvals")
    assert code == 0 and key in out
    code, out = invoke("predict", "-p", "tiny-helper", "-s", "tiny", "-o", str(out_file))
    assert code == 0 and json.loads(open(str(out_file) + ".meta.json").read())["approved"] is True
    code, out = invoke("revoke", key)
    assert code == 0 and "revoked" in out
    code, out = invoke("approvals")
    assert key not in out
    code, out = invoke("approvals", "--all")
    assert key in out and "revoked" in out
    code, out = invoke("revoke", "nothing-like-this")
    assert code == 2 and "no valid approval" in out


def test_a_model_whose_vocabulary_cannot_be_mapped(registry, tiny_suite, tmp_path):
    """A real (random, tiny) Llama whose tokenizer has only special tokens: nothing of it maps onto the target."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from predictors.crosstok import MappingError

    words = ["<a>", "<b>", "<c>", "<d>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                                                              unk_token="<a>")),
                                  unk_token="<a>", bos_token="<b>", additional_special_tokens=words[2:])
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=1, num_key_value_heads=1)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(MappingError, match="cannot be mapped"):
        approve("model", {"path": str(tmp_path / "m")}, ["tiny"], approvers=FAST, thresholds=LENIENT)
    assert not registry.exists()
    code, out = invoke("approve", "model", "-O", f"path={tmp_path / 'm'}", "--suite", "tiny")
    assert code == 2 and "cannot be mapped" in out and "nothing was written" in out
    assert not registry.exists()
