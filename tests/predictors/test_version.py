"""The previous version as a predictor: refused until approved (the one rule), its own distributions when run, never
itself, and an approval bound to its precision and quantization."""

import numpy as np
import pytest

from tests.tasks.versions_fixtures import quant_series


@pytest.fixture
def built(tiny_suite, registry):
    from evals.versions import load_built

    return load_built(quant_series(tiny_suite))


def test_unapproved_version_is_refused(built):
    from predictors import PredictorContext, create
    from predictors.approval import ApprovalError

    ctx = PredictorContext.from_suite(built["int8"]["tiny"])
    with pytest.raises(ApprovalError, match="version:bf16"):
        create("version:bf16", ctx)


def test_version_predicts_with_its_own_distribution(built, target):
    from predictors import PredictorContext, create
    from predictors.base import PromptView
    from tasks.compute import direct_truth

    nxt = built["int8"]["tiny"]
    ctx = PredictorContext.from_suite(nxt)
    p = create("version:f32", ctx, allow_unapproved=True, cache=False)
    assert p.approval_meta["exploratory"] is True
    prompts = nxt.prompts("sealed")
    # it sees prompt views only: id, text, token ids
    preds = p.predict([PromptView(x.id, x.text, tuple(x.token_ids)) for x in prompts])
    q = np.stack([x.probs for x in preds])
    # reference: one plain forward of the float32 target per prompt, smoothed by 1e-3 of the unigram
    exact = np.stack([direct_truth(target.model, x.token_ids, bos_ids=nxt.bos_ids) for x in prompts])
    ref = 0.999 * np.exp(exact.astype(np.float64)) + 1e-3 * ctx.background
    np.testing.assert_allclose(q, ref, rtol=1e-4, atol=1e-12)  # batched vs one pass: float rounding only
    assert np.allclose(q.sum(axis=1), 1.0) and (q > 0).all()


def test_version_never_predicts_itself(built):
    from predictors import PredictorContext, create
    from tasks.versions import VersionsError

    with pytest.raises(VersionsError, match="may never run the target"):
        create("version:int8", PredictorContext.from_suite(built["int8"]["tiny"]), allow_unapproved=True)


def test_approval_is_bound_to_precision_and_quantization(built):
    from evals.versions import approve_version, team_of
    from predictors.approval import ApprovalError, require_approved, system_identity

    keys = {n: system_identity(f"version:{n}")["key"] for n in ("f32", "bf16", "int8")}
    assert len(set(keys.values())) == 3
    assert system_identity("version:q/f32")["key"] == keys["f32"]  # the qualified name is the same system
    failed = approve_version("f32", built["f32"], team=team_of(["uniform"]), max_kl=0.5)
    assert not failed["approved"] and failed["record"] is None
    with pytest.raises(ApprovalError):
        require_approved("version:f32", opt_in=None)
    result = approve_version("f32", built["f32"], team=team_of(["uniform", "unigram"]), max_kl=50.0)
    assert result["approved"] and result["level"] == 1 and result["key"] == keys["f32"]
    assert require_approved("version:f32", opt_in=None)["approval_key"] == keys["f32"]
    with pytest.raises(ApprovalError, match="version:int8"):
        require_approved("version:int8", opt_in=None)
