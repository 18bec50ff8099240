"""Composites: the product-of-experts fit against known weights and a numerical gradient, fitted composites on the
tiny suite, and the rule that a composite of approved members is refused until it is approved itself."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import check_grad
from scipy.stats import entropy

from evals.approve import approve
from predictors import PredictorContext, create, densify, view
from predictors.approval import approval_status, system_identity
from predictors.composite import apply_product, fit_product, parse_member

LENIENT = {"kl_nats": {"max": 50.0}}
MEMBERS = ["unigram", "tiny-helper"]


def _synthetic(seed: int = 0, n: int = 40, V: int = 50) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    members = [rng.dirichlet(np.ones(V), size=n) for _ in range(2)]
    z = 0.7 * np.log(members[0]) + 0.4 * np.log(members[1])
    truth = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return members, truth


def test_product_fit_recovers_known_weights():
    members, truth = _synthetic()
    fit = fit_product(members, truth)
    assert fit.weights == pytest.approx([0.7, 0.4], abs=1e-3)
    assert fit.kl == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(apply_product(members, [0.7, 0.4]), np.exp(truth))


def test_product_gradient_matches_finite_differences():
    members, _ = _synthetic()
    rng = np.random.default_rng(1)
    truth = np.log(rng.dirichlet(np.ones(50), size=40))
    p = np.exp(truth)

    def kl(w):
        q = apply_product(members, w)
        return float(np.mean([entropy(a, b) for a, b in zip(p, q, strict=True)]))

    def grad(w):  # dKL/dw_i = E_q[log p_i] - E_p[log p_i], averaged over prompts
        q = apply_product(members, w)
        return np.array([np.mean(((q - p) * np.log(m)).sum(axis=1)) for m in members])

    for w in ([0.3, 0.9], [1.0, 0.1]):
        assert check_grad(kl, grad, np.array(w)) < 1e-5
    fit = fit_product(members, truth)
    assert fit.kl <= min(kl([1.0, 0.0]), kl([0.0, 1.0])) + 1e-9  # no worse than either member alone
    assert fit.kl == pytest.approx(kl(fit.weights), rel=1e-6)


def test_parse_member_forms():
    assert parse_member("ngram") == ("ngram", {})
    assert parse_member('model:{"path": "/x"}') == ("model", {"path": "/x"})
    assert parse_member({"name": "ngram", "options": {"order": 3}}) == ("ngram", {"order": 3})
    assert parse_member("file:preds.jsonl") == ("file:preds.jsonl", {})
    with pytest.raises(ValueError, match="JSON object"):
        parse_member("model:[1]")


@pytest.mark.parametrize("kind", ["mixture", "product"])
def test_fitted_composite_beats_its_members_on_practice(tiny_suite, tiny_helper, kind):
    ctx = PredictorContext.from_suite(tiny_suite)
    comp = create("composite", ctx, allow_unapproved=True, members=MEMBERS, kind=kind)
    assert comp.practice_kl <= min(comp.member_kl) + 1e-6
    prompts = [view(p) for p in tiny_suite.prompts("practice")]
    q = np.stack([densify(x, ctx.vocabulary, ctx.background) for x in comp.predict(prompts)])
    truth = np.exp(tiny_suite.truth_split("practice")[1].astype(np.float64))
    assert np.mean([entropy(t, r) for t, r in zip(truth, q, strict=True)]) == pytest.approx(comp.practice_kl,
                                                                                                rel=1e-4)
    assert comp.identity()["kind"] == f"composite-{kind}"


def test_composite_of_approved_members_is_refused_until_approved_itself(registry, tiny_suite, tiny_helper):
    approve("tiny-helper", {}, ["tiny"], approvers=["uniform", "unigram"], thresholds=LENIENT)
    assert all(approval_status(m)[0] for m in MEMBERS)  # every member approved
    options = {"members": MEMBERS, "kind": "mixture"}
    ok, reason = approval_status("composite", options)
    assert not ok and "logitpred approve composite" in reason
    ok, _ = approval_status("mixture", {"members": MEMBERS})  # issue 4's mixture of the same members: also new
    assert not ok
    outcome = approve("composite", options, ["tiny"], approvers=["uniform", "unigram"], thresholds=LENIENT)
    assert outcome.approved and outcome.level == 1
    assert approval_status("composite", options)[0]
    # another kind, or another member, is another system
    assert not approval_status("composite", {**options, "kind": "product"})[0]
    assert system_identity("composite", options)["key"] != system_identity("composite", {**options,
                                                                                          "kind": "product"})["key"]


def test_composite_bad_options(tiny_suite):
    ctx = PredictorContext.from_suite(tiny_suite)
    with pytest.raises(ValueError, match="at least two members"):
        create("composite", ctx, allow_unapproved=True, members=["unigram"])
    with pytest.raises(ValueError, match="kind"):
        create("composite", ctx, allow_unapproved=True, members=["unigram", "uniform"], kind="sum")
    with pytest.raises(KeyError, match="unknown predictor"):
        create("composite", ctx, members=["unigram", "no-such-predictor"])


def test_member_options_with_a_key_twice_are_refused():
    from predictors.composite import parse_member

    assert parse_member('ngram:{"order": 3}') == ("ngram", {"order": 3})
    with pytest.raises(ValueError, match="duplicate key 'order'"):
        parse_member('ngram:{"order": 3, "order": 5}')
