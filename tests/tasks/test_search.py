"""Prompt search (issue 14 parts 1, 2, 7) on the real SmolLM2 with tiny budgets (k = 2 free tokens, a few dozen target
passes): GCG raises log P(o | x) over its random initial prompt; frontiers are Pareto (direct check); a search
interrupted mid-run and resumed ends in the same state as one never interrupted; every found prompt re-tokenizes to
itself (and is followed by o as o's tokens); budgets are never exceeded and the pass counters add up; R's plausibility
agrees between its token path and its text path (another-tokenizer R); bad inputs raise ``SearchError`` naming why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.rare.scorer import BehaviourScorer
from tasks.search import (
    Reference,
    SearchError,
    behaviour_from_text,
    is_frontier,
    make_template,
    merge,
    results,
    run_search,
)
from tasks.search.template import random_prompt
from tasks.tokens import encode_text

PREFIX, OUT, K = "The capital of France is", " Paris", 2


def _setup(target, k=K, same_tokenizer=True):
    tpl = make_template(target.tokenizer, PREFIX, k, bos=target.bos_ids, context=target.context, longest_member=1,
                        vocab_size=target.vocab_size)
    ref = Reference(target.model, target.tokenizer, target.bos_ids, {"kind": "target", **target.identity.to_dict()},
                    tpl, is_target=True, same_tokenizer=same_tokenizer)
    return tpl, ref, behaviour_from_text("paris", OUT, target.tokenizer)


def _search(target, tmp_path, method, *, lambdas=(0.0, 1.0), budget=24, on_progress=None, name=None, **options):
    tpl, ref, sb = _setup(target)
    path = tmp_path / (name or method) / "state.json"
    return run_search(target, [sb], tpl, ref, method=method, lambdas=list(lambdas), budget=budget, seed=0,
                      state_path=path, options=options, on_progress=on_progress), path


@pytest.fixture(scope="module")
def states(target, tmp_path_factory):
    """One small search per method (two λ runs each)."""
    tmp = tmp_path_factory.mktemp("search")
    methods = (("gcg", {"search_width": 8}), ("random", {"search_width": 8}),
               ("beam", {"beam_width": 2, "proposals": 4}))
    return {m: _search(target, tmp, m, **opts)[0] for m, opts in methods}


def test_gcg_raises_log_p_over_its_random_initial_prompt(target, states):
    tpl, _, sb = _setup(target)
    x0 = random_prompt(tpl, np.random.default_rng([0, 0]), OUT, list(sb.behaviour.members[0]))
    lp0 = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=tpl.prefix,
                          members=sb.behaviour.members).log_prob(x0[None])[0]
    best = states["gcg"]["runs"]["paris|0"]["best"]  # λ = 0: pure log P(o | x)
    assert best["log_p"] > lp0 + 0.5, (best["log_p"], lp0)
    assert best["free_ids"] != x0.tolist()


def test_frontier_is_pareto_and_holds_the_best_per_lambda(states):
    rng = np.random.default_rng(0)
    pts = [{"log_p": float(a), "ref_per_token": float(b)} for a, b in rng.integers(0, 6, size=(60, 2))]
    front = merge([], pts)
    assert is_frontier(front) and front
    for p in pts:  # every point left out is dominated by a kept one, or sits at a kept point
        assert any(q is p for q in front) or any(
            q["log_p"] >= p["log_p"] and q["ref_per_token"] >= p["ref_per_token"] for q in front)
    assert merge(merge([], pts[:30]), pts[30:]) == front  # merging in steps = merging at once
    for state in states.values():
        front, best = results(state)
        assert front and is_frontier(front)
        assert [b["lambda"] for b in best] == [0.0, 1.0]
        for b in best:  # the best at λ beats every frontier point at λ, and every run's own best
            value = b["log_p"] + b["lambda"] * b["ref_per_token"]
            assert value == pytest.approx(b["objective"])
            assert all(value >= r["log_p"] + b["lambda"] * r["ref_per_token"] for r in front)
            run_best = state["runs"][f"paris|{[0.0, 1.0].index(b['lambda'])}"]["best"]
            assert value >= run_best["objective"] - 1e-9


def test_found_prompts_retokenize_and_budgets_hold(target, states):
    tok = target.tokenizer
    for method, state in states.items():
        front, best = results(state)
        for r in front + best:
            assert encode_text(tok, r["prompt_text"]) == r["prompt_ids"], (method, r)
            assert encode_text(tok, r["prompt_text"] + OUT) == r["prompt_ids"] + r["members"][0]
            assert len(r["free_ids"]) == K and r["found_at"] <= 24
        for run in state["runs"].values():
            c = run["counters"]
            assert run["done"] and run["counters_spent"] <= 24
            assert c["forward"] + c["backward"] + c["reference"] == run["counters_spent"]  # R = target: counted
            assert (c["backward"] > 0) == (method == "gcg")
    # the values recorded are the target's: recompute the frontier's log P(o | x) and greedy indicator directly
    tpl, _, sb = _setup(target)
    front = results(states["beam"])[0]
    scorer = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=tpl.prefix, members=sb.behaviour.members)
    lp, greedy = scorer.evaluate(np.array([r["free_ids"] for r in front]))
    np.testing.assert_allclose(lp, [r["log_p"] for r in front], rtol=1e-5, atol=1e-5)
    assert greedy.tolist() == [r["greedy_is_behaviour"] for r in front]


def test_resume_after_interruption_equals_an_uninterrupted_run(target, tmp_path):
    calls = []

    def stop(key, spent, budget):
        calls.append(key)
        if len(calls) == 3:  # mid-way through the first λ run, right after a step was saved
            raise KeyboardInterrupt

    opts = {"beam_width": 2, "proposals": 4}
    with pytest.raises(KeyboardInterrupt):
        _search(target, tmp_path, "beam", on_progress=stop, name="cut", **opts)
    cut = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert not cut["runs"]["paris|0"]["done"] and "paris|1" not in cut["runs"]
    resumed, _ = _search(target, tmp_path, "beam", name="cut", **opts)
    whole, _ = _search(target, tmp_path, "beam", name="whole", **opts)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(whole, sort_keys=True)
    # a state with other settings is not resumed
    with pytest.raises(SearchError, match="other settings.*budget"):
        _search(target, tmp_path, "beam", name="whole", budget=25, **opts)


def test_reference_text_path_matches_token_path(target):
    """An R with "another tokenizer" scores the decoded text; on the target itself that equals the token path."""
    tpl, ref, _ = _setup(target)
    _, text_ref, _ = _setup(target, same_tokenizer=False)
    x = np.array([random_prompt(tpl, np.random.default_rng(s)) for s in range(3)])
    lp_tok, n_tok = ref.plausibility(x)
    lp_txt, n_txt = text_ref.plausibility(x)
    np.testing.assert_allclose(lp_txt, lp_tok, rtol=1e-4, atol=1e-3)
    assert n_tok.tolist() == n_txt.tolist() == [K] * 3
    # the token path against one plain forward of prefix + x (no cache)
    import torch

    ids = torch.tensor([[*tpl.prefix, *x[0]]])
    with torch.inference_mode():
        lp = torch.log_softmax(target.model(input_ids=ids).logits[0].float(), -1)
    n = len(tpl.prefix)
    direct = sum(float(lp[n - 1 + j, x[0, j]]) for j in range(K))
    assert lp_tok[0] == pytest.approx(direct, abs=1e-3)


def test_bad_inputs_name_the_cause(target, tmp_path):
    tok = target.tokenizer
    with pytest.raises(SearchError, match="empty after tokenization"):
        behaviour_from_text("b", "", tok)
    with pytest.raises(SearchError, match="longer than the target's context"):
        make_template(tok, PREFIX, target.context, bos=target.bos_ids, context=target.context, longest_member=1,
                      vocab_size=target.vocab_size)
    with pytest.raises(SearchError, match="at least one free token"):
        make_template(tok, PREFIX, 0, bos=target.bos_ids, context=target.context, longest_member=1,
                      vocab_size=target.vocab_size)
    with pytest.raises(SearchError, match="positive number of target passes"):
        _search(target, tmp_path, "random", budget=0)
    with pytest.raises(SearchError, match="too small for gcg"):
        _search(target, tmp_path, "gcg", budget=5)
    with pytest.raises(SearchError, match="unknown option"):
        _search(target, tmp_path, "random", width=3)
    with pytest.raises(SearchError, match="unknown search method"):
        _search(target, tmp_path, "anneal")
    assert not (tmp_path / "gcg" / "state.json").exists()  # refused before anything was written
