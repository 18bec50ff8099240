"""Whole-continuation questions answered by predictors (issue 12 part 6): the generic chain rule over next-token
predictions on harness-built step prompts (no peeking), exact values for the baselines, the n-gram fast path (same
numbers as the generic path), the helper's one pass (equal to the generic path with the target's tokenizer), and the
CLI (`predict` then `score`, and `run`) on a small trajectory suite of real SmolLM2 truth on real wiki text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from predictors import Prediction, PredictorContext, PromptView, create, densify
from predictors.chain import (
    GENERIC,
    ChainError,
    TrajectoryQuestion,
    answer_questions,
    chain_rule_answers,
    n_step_prompts,
    split_questions,
    step_prompts,
    token_probability,
)
from predictors.trajectory_format import TrajectoryPrediction


@pytest.fixture(scope="module")
def traj(target, tiny_helper, tmp_path_factory):
    """A trajectory suite (3 + 3 wiki prompts of at most 24 tokens, M = 3, two behaviours) with its truth, in a
    module's own data dir; a small real-text corpus (300 wiki documents) for a quick n-gram."""
    from tasks import SuiteConfig, build_suite
    from tasks.corpora import read_corpus
    from tasks.trajectory import build_trajectories

    root = tmp_path_factory.mktemp("chain")
    beh = root / "behaviours.jsonl"
    beh.write_text('{"id": "the", "text": " the"}\n{"id": "of", "text": " of the"}\n')
    corpus = root / "wiki300.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in read_corpus("wiki")[:300]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOGITPRED_HOME", str(root / "home"))
        mp.setenv("LOGITPRED_RESULTS", str(root / "results"))
        cfg = SuiteConfig("tch", "wiki", practice=3, sealed=3, max_doc_tokens=24, max_docs=40, continuation=3,
                          behaviours=str(beh))
        suite = build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
        suite.compute_truth(target)
        build_trajectories(suite, target)
        ctx = PredictorContext.from_suite(suite)
        questions = split_questions(suite, "practice") + split_questions(suite, "sealed")
        yield {"suite": suite, "ctx": ctx, "questions": questions, "corpus": str(corpus), "root": root,
               "helper": tiny_helper, "tok": ctx.tokenizer()}


class Recorder:
    """A predictor that answers uniformly and records every batch of views it is given, in call order."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[list[PromptView]] = []

    def predict(self, prompts):
        self.calls.append(list(prompts))
        return [Prediction(p.id, {}, "uniform") for p in prompts]


def test_questions_and_step_prompts(traj):
    qs, tok = traj["questions"], traj["tok"]
    assert {q.kind for q in qs} == {"realized", "given"} and all(1 <= len(q.token_ids) <= 3 for q in qs)
    for q in qs:
        views = step_prompts(q, tok)
        assert len(views) == len(q.token_ids) and views[0] == q.prompt  # step 1 is the prompt's own view
        for k, v in enumerate(views):
            assert v.token_ids == q.prompt.token_ids + q.token_ids[:k]
            assert v.text == tok.decode(list(v.token_ids), clean_up_tokenization_spaces=False)
            assert k == 0 or v.id == f"{q.continuation_id}@{k}"
        assert views[0].text == q.prompt.text


def test_no_peeking(traj):
    """The predictor asked for step t of a continuation has received only x + y_<t of it, in that call and every
    earlier one; it never receives the whole continuation; identical step prompts are asked once."""
    qs = traj["questions"]
    rec = Recorder()
    chain_rule_answers(rec, traj["ctx"], qs, batch_size=2, tokenizer=traj["tok"])
    seen = [v.token_ids for call in rec.calls for v in call]
    assert len(seen) == len(set(seen)) == n_step_prompts(qs)
    for q in qs:
        x, y = q.prompt.token_ids, q.token_ids
        first = [next(c for c, call in enumerate(rec.calls) if any(v.token_ids == x + y[:k] for v in call))
                 for k in range(len(y))]
        assert first == sorted(first) and len(set(first)) == len(first)  # y_t shown only after step t was answered
        assert not any(v.token_ids == x + y for call in rec.calls for v in call)


def test_uniform_and_unigram_exact(traj):
    ctx, qs = traj["ctx"], traj["questions"]
    V, b = ctx.vocab_size, ctx.background
    for name in ("uniform", "unigram"):
        a = answer_questions(create(name, ctx), ctx, qs)
        assert a.method == GENERIC and len(a.predictions) == len(qs)
        for q, p in zip(qs, a.predictions, strict=True):
            assert (p.prompt_id, p.continuation_id) == (q.prompt.id, q.continuation_id)
            want = [-math.log(V)] * len(q.token_ids) if name == "uniform" else \
                [math.log(b[t] / b.sum()) for t in q.token_ids]
            assert p.steps == pytest.approx(want, abs=1e-12) and p.logprob == pytest.approx(sum(want), abs=1e-12)
        if name == "uniform":
            assert all(p.logprob == -len(q.token_ids) * math.log(V) for q, p in zip(qs, a.predictions, strict=True))


def test_token_probability_matches_densify(traj):
    ctx = traj["ctx"]
    rng = np.random.default_rng(0)
    for rest in ("uniform", "unigram"):
        named = rng.choice(ctx.vocab_size, 5, replace=False)
        pred = Prediction("p", [(int(t), 0.1) for t in named], rest)
        dense = densify(pred, ctx.vocabulary, ctx.background)
        for t in [*named[:2], *rng.choice(ctx.vocab_size, 5)]:
            assert token_probability(pred, int(t), ctx) == pytest.approx(dense[t], rel=1e-12)
    full = Prediction("p", probs=dense)
    assert token_probability(full, 7, ctx) == pytest.approx(dense[7], rel=1e-12)


def test_ngram_fast_path_same_numbers(traj):
    ctx, qs = traj["ctx"], traj["questions"]
    p = create("ngram", ctx, corpora=traj["corpus"], order=3)
    generic = chain_rule_answers(p, ctx, qs, tokenizer=traj["tok"])
    p.predict = None  # the fast path reads the index, never a next-token prediction
    fast = answer_questions(p, ctx, qs)
    assert fast.method.startswith("n-gram index") and not fast.notes
    for f, g in zip(fast.predictions, generic, strict=True):
        assert abs(f.logprob - g.logprob) < 1e-9 and np.allclose(f.steps, g.steps, rtol=0, atol=1e-9)


def test_helper_one_pass_equals_generic(traj):
    """With the target's tokenizer the helper's one pass gives the generic chain rule's numbers (1e-4); a question
    whose helper tokenization does not extend the prompt's is left to the generic path, with a note."""
    from predictors.chain_fast import helper_answers
    from predictors.model import ModelPredictor

    ctx, qs = traj["ctx"], traj["questions"]
    p = ModelPredictor(ctx, "tiny-helper", traj["helper"], cache=False)
    assert p.same_tokenizer
    generic = chain_rule_answers(p, ctx, qs, tokenizer=traj["tok"])
    one = answer_questions(p, ctx, qs)
    assert one.method.startswith("helper model") and one.generic == 0
    for f, g in zip(one.predictions, generic, strict=True):
        assert abs(f.logprob - g.logprob) < 1e-4 and np.allclose(f.steps, g.steps, atol=1e-4)
    # another tokenizer's path (encode the texts): a continuation merging with the prompt's last word is refused
    tok = traj["tok"]
    x = tuple(tok("The capital of Fra", add_special_tokens=False)["input_ids"])
    merged = TrajectoryQuestion(PromptView("m", "The capital of Fra", x), "m:g:nce", "given", "nce",
                                tuple(tok("nce", add_special_tokens=False)["input_ids"]))
    p.same_tokenizer = False
    notes: list[str] = []
    got = helper_answers(p, [qs[0], merged], notes=notes)
    assert got[1] is None and "does not extend" in notes[0] and "m:g:nce" in notes[0]
    assert got[0].steps is None and got[0].logprob < 0  # the helper's own tokens: no target steps


def test_helper_one_pass_cuts_long_prompts_to_its_context(traj):
    """A prompt longer than the helper's context is cut so that prompt + continuation fits (the bug: one position
    too many, a TargetError on prompts of context - m + 1 tokens); the answer equals the helper's own chain rule on
    the cut prompt."""
    from predictors.model import ModelPredictor
    from tasks.forward import model_context

    ctx, tok = traj["ctx"], traj["tok"]
    p = ModelPredictor(ctx, "tiny-helper", traj["helper"], cache=False)
    limit = model_context(p._ensure_loaded().model.config)
    ids = tuple(tok(" the river" * limit, add_special_tokens=False)["input_ids"])[: limit + 5]
    cont = tuple(tok(" and the sea", add_special_tokens=False)["input_ids"])
    q = TrajectoryQuestion(PromptView("long", tok.decode(list(ids)), ids), "long:g:x", "given", " and the sea", cont)
    one = answer_questions(p, ctx, [q])
    assert one.generic == 0 and one.method.startswith("helper model")
    room = limit - len(p._ensure_loaded().bos_ids) - len(cont)
    cut = TrajectoryQuestion(PromptView("cut", tok.decode(list(ids[-room:])), ids[-room:]), "cut:g:x", "given",
                             " and the sea", cont)
    generic = chain_rule_answers(p, ctx, [cut], tokenizer=tok)
    assert abs(one.predictions[0].logprob - generic[0].logprob) < 1e-4


def test_hook_fallback_and_bad_answers(traj):
    ctx, qs = traj["ctx"], traj["questions"][:3]

    class Own(Recorder):
        def trajectory_logprobs(self, questions):
            return [None] + [TrajectoryPrediction(q.prompt.id, q.continuation_id, -1.0) for q in questions[1:]]

    own = Own()
    a = answer_questions(own, ctx, qs)
    assert a.method == "the predictor's own trajectory_logprobs" and a.generic == 1 and "1 of 3" in a.notes[0]
    assert [x.logprob for x in a.predictions[1:]] == [-1.0, -1.0] and own.calls  # the first by the chain rule
    assert a.predictions[0].logprob == pytest.approx(-len(qs[0].token_ids) * math.log(ctx.vocab_size))

    class WrongId(Recorder):
        def predict(self, prompts):
            return [Prediction("other", {}, "uniform") for _ in prompts]

    with pytest.raises(ChainError, match="prediction for 'other'"):
        chain_rule_answers(WrongId(), ctx, qs, tokenizer=traj["tok"])

    class Bad(Recorder):
        def predict(self, prompts):
            return [Prediction(p.id, {"no such token anywhere": 0.5}) for p in prompts]

    with pytest.raises(ChainError, match="step 1"):
        chain_rule_answers(Bad(), ctx, qs, tokenizer=traj["tok"])


def test_cli_predict_score_and_run(traj):
    """`logitpred predict` on a trajectory suite writes one line per question with its meta; `score` scores it;
    the n-gram's fast path and --generic write the same numbers; `run` scores in-process, one run per split."""
    import pandas as pd

    from evals.cli import app

    runner = CliRunner()
    root, qs = traj["root"], split_questions(traj["suite"], "practice")
    files = {}  # the module fixture's data dir and results folder are in force
    for name, extra in (("uniform", []), ("unigram", []),
                        ("ngram", ["-O", f"corpora={traj['corpus']}", "-O", "order=3"]),
                        ("ngram-generic", ["-O", f"corpora={traj['corpus']}", "-O", "order=3", "--generic"])):
        f = root / f"{name}.jsonl"
        args = ["predict", "-p", name.split("-")[0], "-s", "tch", "--split", "practice", "-o", str(f), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        assert [(x["prompt_id"], x["continuation_id"]) for x in lines] == [(q.prompt.id, q.continuation_id)
                                                                           for q in qs]
        meta = json.loads(Path(str(f) + ".meta.json").read_text())
        assert meta["name"] == name.split("-")[0] and meta["approved"] is True
        assert meta["trajectory"]["questions"] == len(qs)
        files[name] = (f, lines, meta)
    assert files["ngram"][2]["trajectory"]["answered_by"].startswith("n-gram index")
    assert files["ngram-generic"][2]["trajectory"]["answered_by"] == GENERIC
    for a, b in zip(files["ngram"][1], files["ngram-generic"][1], strict=True):
        assert abs(a["logprob"] - b["logprob"]) < 1e-9
    for name in ("uniform", "unigram", "ngram"):
        result = runner.invoke(app, ["score", str(files[name][0]), "-s", "tch", "--split", "practice"])
        assert result.exit_code == 0, result.output
        assert f"{len(qs)} of {len(qs)} questions scored" in " ".join(result.output.split())
    run = sorted((root / "results").glob("*uniform*"))[-1]
    per = pd.read_csv(run / "per_prompt.csv")
    V = traj["ctx"].vocab_size
    assert np.allclose(per["pred_logprob"], -per["n_tokens"] * math.log(V), atol=1e-9)
    before = set((root / "results").iterdir())
    result = runner.invoke(app, ["run", "-s", "tch", "-p", "uniform", "-p", "unigram", "--split", "practice"])
    assert result.exit_code == 0, result.output
    assert "whole continuations on tch" in result.output and "unigram" in result.output
    new = set((root / "results").iterdir()) - before
    summaries = [json.loads((d / "summary.json").read_text()) for d in new]
    assert len(summaries) == 2 and all(s["questions"] == "trajectory" and s["n_scored"] == len(qs)
                                       and s["predictions_file"] is None for s in summaries)
    by_name = {s["predictor"]["name"]: s for s in summaries}
    assert by_name["uniform"]["predictor"]["trajectory"]["answered_by"] == GENERIC
