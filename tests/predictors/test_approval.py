"""The approval chain on real models: level 0 by definition, a helper refused until approved, approval evidence checked
against a direct computation, revocation, levels, the CLI gate, and bad input that writes nothing; the one check
(``require_approved``) as ``create()``, composites and files apply it; concurrent approvals from two processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy
from typer.testing import CliRunner

from evals.approve import approve
from evals.cli import app
from predictors import PredictorContext, create, register, view
from predictors.approval import (
    ApprovalError,
    approval_status,
    declare_level0,
    file_approval,
    load_records,
    require_approved,
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


def test_a_helper_named_by_option_is_approved(registry, tiny_suite, tiny_helper):
    """``tiny-helper`` with ``name``: the option reaches the factory (it once collided with ``create``'s own
    ``name`` parameter: TypeError); the approval covers the named helper's weights, not the default one's."""
    from predictors.model import trained_helper_dir
    from predictors.train_helper import TrainConfig, train_helper

    other = trained_helper_dir("other-tiny")
    train_helper(other, TrainConfig(corpora=("wiki",), steps=2, batch_size=2, context=32, hidden=32, layers=1,
                                    heads=2, warmup=1, seed=3, eval_every=2, eval_batches=1))
    try:
        outcome = approve("tiny-helper", {"name": "other-tiny"}, ["tiny"], approvers=FAST, thresholds=LENIENT)
        assert outcome.approved and outcome.level == 1
        assert load_records()[-1].key == system_identity("model", {"path": str(other)})["key"]
        assert approval_status("tiny-helper", {"name": "other-tiny"})[0] and not approval_status("tiny-helper")[0]
        p = create("tiny-helper", PredictorContext.from_suite(tiny_suite), name="other-tiny")
        assert p.identity()["helper"]["weights_sha256"] == system_identity("model", {"path": str(other)})["weights_sha256"]
    finally:
        import shutil

        shutil.rmtree(other, ignore_errors=True)


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


# --- the one check: require_approved, create(), file_approval -----------------------------------------------------------
LEVEL0_META = {"approved": True, "exploratory": False, "level": 0, "approval_key": None}


def _meta(m):
    return {k: m[k] for k in ("approved", "exploratory", "level", "approval_key")}


def test_require_approved_metadata(registry, tiny_suite, tiny_helper):
    assert _meta(require_approved("unigram")) == LEVEL0_META
    assert _meta(require_approved("human", {"participant": "alice"})) == LEVEL0_META
    key = system_identity("tiny-helper")["key"]
    with pytest.raises(ApprovalError) as err:
        require_approved("tiny-helper")
    msg = str(err.value)
    for part in ("'tiny-helper'", key, "no valid approval record", "`logitpred approve tiny-helper`",
                 "--allow-unapproved", "-M allow_unapproved=true", "allow_unapproved=True"):
        assert part in msg, part
    meta = require_approved("tiny-helper", allow_unapproved=True)
    assert _meta(meta) == {"approved": False, "exploratory": True, "level": None, "approval_key": None}
    assert key in meta["approval"]
    with pytest.raises(ApprovalError, match="unknown predictor 'no-such-thing'; available: .*unigram"):
        require_approved("no-such-thing")
    # a trained helper's name is not a predictor: the error says how to use it (issue 16: the ladder's rungs)
    with pytest.raises(ApprovalError, match=r"unknown predictor 'tiny'.* is a trained helper: use it as "
                                            r"`-p tiny-helper -O name=tiny`"):
        require_approved("tiny")
    for bad in ("x" * 300, "..", "/etc", "helpers"):  # names that are no helper folder: the plain message, no OSError
        with pytest.raises(ApprovalError, match="unknown predictor") as err:
            require_approved(bad)
        assert "trained helper" not in str(err.value)
    # no opt-in where there is none (the gate, approvers): the refusal names only the approval command
    with pytest.raises(ApprovalError) as err:
        require_approved("tiny-helper", opt_in=None)
    assert "logitpred approve tiny-helper" in str(err.value) and "allow_unapproved" not in str(err.value)
    approve("tiny-helper", {}, ["tiny"], approvers=FAST, thresholds=LENIENT)
    meta = require_approved("tiny-helper")
    assert _meta(meta) == {"approved": True, "exploratory": False, "level": 1, "approval_key": key}
    assert require_approved("tiny-helper", allow_unapproved=True)["exploratory"] is False  # approved: nothing to mark
    revoke(key, "weights leaked")
    with pytest.raises(ApprovalError, match="revoked .*weights leaked"):
        require_approved("tiny-helper")


def test_create_refuses_an_unapproved_helper(registry, tiny_suite, tiny_helper):
    from predictors import PredictorContext, create, create_with_approval

    ctx = PredictorContext.from_suite(tiny_suite)
    with pytest.raises(ApprovalError, match="gated evaluation refused: 'tiny-helper'.*allow_unapproved=True"):
        create("tiny-helper", ctx)
    with pytest.raises(ApprovalError, match="'model'"):  # the same weights under another name: the same refusal
        create("model", ctx, path=str(tiny_helper))
    with pytest.raises(KeyError, match="unknown predictor 'nope'"):  # unknown names: as before, the known ones listed
        create("nope", ctx)
    p, meta = create_with_approval("tiny-helper", ctx, {"cache": False}, allow_unapproved=True)
    assert _meta(meta) == {"approved": False, "exploratory": True, "level": None, "approval_key": None}
    assert p.approval_meta == meta
    prompts = [view(x) for x in tiny_suite.prompts("practice")]
    assert p.distributions(prompts).shape == (6, tiny_suite.vocab_size)
    u, meta = create_with_approval("unigram", ctx)
    assert _meta(meta) == LEVEL0_META and u.approval_meta == meta
    # a composite holding the helper is refused as a whole; with the opt-in its members are built under it
    with pytest.raises(ApprovalError, match="'composite'"):
        create("composite", ctx, members=["unigram", "tiny-helper"])
    comp = create("composite", ctx, members=["unigram", "tiny-helper"], allow_unapproved=True)
    assert comp.approval_meta["exploratory"] is True
    assert [m.approval_meta["member_of"] for m in comp.members] == ["composite", "composite"]


@register("test-sneaky-level0")
def _sneaky(ctx, **options):
    """Claims level 0 but builds a helper inside: its own level-0 status must not cover the helper."""
    from predictors import create

    return create("tiny-helper", ctx)


declare_level0("test-sneaky-level0")


def test_a_level0_predictor_cannot_build_an_unapproved_helper(registry, tiny_suite, tiny_helper):
    from predictors import PredictorContext, create

    ctx = PredictorContext.from_suite(tiny_suite)
    assert approval_status("test-sneaky-level0")[0]
    with pytest.raises(ApprovalError, match="'tiny-helper'"):
        create("test-sneaky-level0", ctx, allow_unapproved=True)  # the opt-in is for what it claims: level 0
    mixture = create("mixture", ctx, members=["uniform", "unigram"], cache=False)  # level-0 members: each checked, fine
    assert mixture.approval_meta["level"] == 0


def test_file_approval(registry, tiny_suite, tiny_helper):
    assert _meta(file_approval(None)) == LEVEL0_META  # predictions made elsewhere, no metadata: file:, level 0
    assert _meta(file_approval({"name": "human", "label": "human:alice", "options": {"participant": "alice"},
                                "approved": True})) == LEVEL0_META
    explored = {"name": "tiny-helper", "options": {}, "approved": False, "exploratory": True}
    assert _meta(file_approval(explored))["exploratory"] is True  # the opt-in was given when it was predicted
    with pytest.raises(ApprovalError, match="gated evaluation refused"):
        file_approval({"name": "tiny-helper", "options": {}, "approved": True})  # claims approval it does not have
    assert file_approval({"name": "tiny-helper", "approved": True}, allow_unapproved=True)["approved"] is False


ADD_RECORDS = """
import sys, time
from pathlib import Path
from predictors.approval import ApprovalRecord, add_record
path, tag, n, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
while time.time() < start:
    time.sleep(0.001)
for i in range(n):
    add_record(ApprovalRecord(key=f"{tag}-{i}", system={"name": tag, "options": {}}, identity={}, level=1, suites=[],
                              thresholds={}, scores={}, evidence=[], approvers=[]), path)
"""


def test_concurrent_approvals_all_land(tmp_path):
    """Two real processes append 40 records each to one registry at the same moment: all 80 are there, once each."""
    import subprocess
    import sys
    import time

    path = tmp_path / "approvals.json"
    start = time.time() + 3.0  # both interpreters are up by then
    procs = [subprocess.Popen([sys.executable, "-c", ADD_RECORDS, str(path), tag, "40", str(start)],
                              cwd=Path(__file__).resolve().parents[2]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    keys = [r.key for r in load_records(path)]
    assert sorted(keys) == sorted(f"{t}-{i}" for t in "ab" for i in range(40))
    assert [k for k in keys if k.startswith("a")] == [f"a-{i}" for i in range(40)]  # each writer's order kept
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / "approvals.json.lock").exists()


def test_unknown_members_are_a_bad_request_not_an_approval_question(registry, tiny_suite, tiny_helper):
    from predictors import PredictorContext, create

    ctx = PredictorContext.from_suite(tiny_suite)
    for name in ("composite", "mixture"):
        with pytest.raises(KeyError, match="unknown predictor 'no-such-member'; available: .*unigram"):
            create(name, ctx, members=["unigram", "no-such-member"])
        with pytest.raises(KeyError, match=r"is a trained helper: use it as `-p tiny-helper -O name=tiny`"):
            create(name, ctx, members=["unigram", "tiny"])  # a helper's name given as a member: how to say it
    m = create("mixture", ctx, members="unigram", cache=False)  # one member given as a string: level 0, as it reads
    assert m.approval_meta["level"] == 0 and approval_status("mixture", {"members": "unigram"})[0]


def test_python_scoring_marks_an_unapproved_helper_whatever_the_caller_claims(registry, tiny_suite, tiny_helper):
    """evals.scoring.score from Python applies the same rule: a helper's predictions are marked by its approval."""
    from evals.scoring import predict_validated, score

    helper = create("tiny-helper", PredictorContext.from_suite(tiny_suite), allow_unapproved=True)
    checked = predict_validated(tiny_suite, "practice", helper)
    claimed = {"name": "tiny-helper", "options": {}, "approved": True}  # a false claim
    result = score(tiny_suite, "practice", checked, predictor=claimed, write=False)
    assert result.summary["predictor"]["approved"] is False
    assert "has no valid approval record" in result.summary["predictor"]["approval"]
    plain = score(tiny_suite, "practice", checked, predictor={"name": "unigram"}, write=False)
    assert plain.summary["predictor"]["approved"] is True and plain.summary["predictor"]["level"] == 0
