"""Plugging in a predictor without touching the core, and what a predictor is (not) given."""

import dataclasses

import numpy as np
import pytest

from evals.scoring import predict_split, score
from predictors import Prediction, PredictorContext, PromptView, available, create, register, validate


class EchoLast:
    name = "echo-last"

    def predict(self, prompts):
        return [Prediction(p.id, [[p.token_ids[-1], 0.2]], rest="unigram") for p in prompts]


def test_custom_predictor_registers_and_scores(tiny_suite):
    from predictors.approval import ApprovalError, declare_level0

    register("echo-last")(lambda ctx, **o: EchoLast())
    assert {"echo-last", "uniform", "unigram"} <= set(available())
    ctx = PredictorContext.from_suite(tiny_suite)
    with pytest.raises(ApprovalError, match="'echo-last'"):  # not declared level 0 nor approved: refused
        create("echo-last", ctx)
    declare_level0("echo-last")  # it runs no model (README, "Adding a predictor")
    preds = predict_split(tiny_suite, "practice", create("echo-last", ctx))
    checked = validate([(None, p) for p in preds], [p.id for p in tiny_suite.prompts("practice")],
                       tiny_suite.vocabulary, tiny_suite.background)
    assert not checked.errors and len(checked.prompt_ids) == 6
    result = score(tiny_suite, "practice", checked, predictor={"name": "echo-last"}, write=False)
    assert np.isfinite(result.per_prompt["kl_nats"]).all()


def test_unknown_name_lists_known_ones(tiny_suite):
    with pytest.raises(KeyError, match="available: .*uniform"):
        create("nope", PredictorContext.from_suite(tiny_suite))


def test_predictors_see_views_not_answers(tiny_suite):
    seen = []

    class Spy:
        name = "spy"

        def predict(self, prompts):
            seen.extend(prompts)
            return [Prediction(p.id) for p in prompts]

    predict_split(tiny_suite, "sealed", Spy())
    assert seen and all(type(p) is PromptView for p in seen)
    assert {f.name for f in dataclasses.fields(PromptView)} == {"id", "text", "token_ids"}
    ctx = PredictorContext.from_suite(tiny_suite)
    ids, logp = ctx.practice_truth()
    assert set(ids) == {p.id for p in tiny_suite.prompts("practice")}
    assert not {f.name for f in dataclasses.fields(ctx)} & {"model", "sealed_truth", "truth"}
