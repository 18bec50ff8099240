"""Fitted mixture: gradient against finite differences, recovery of known weights and temperature, abstaining
members, the prompt cache against brute force, and the predictor fitting on practice truth only (sealed never read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import check_grad

from predictors.cache import prompt_cache
from predictors.mixture import apply_mixture, fit_mixture, mixture_objective


def _dirichlet(rng: np.random.Generator, n: int, V: int, alpha: float = 0.3) -> np.ndarray:
    return rng.dirichlet(np.full(V, alpha), size=n)


@pytest.mark.parametrize("temperature", [True, False])
def test_gradient_matches_finite_differences(temperature: bool) -> None:
    rng = np.random.default_rng(0)
    P = np.stack([_dirichlet(rng, 7, 20) for _ in range(3)])
    P[2, 1] = 0.0  # abstains on prompt 1
    available = np.ones((3, 7), dtype=bool)
    available[2, 1] = False
    logp = np.log(_dirichlet(rng, 7, 20, alpha=1.0))
    theta = rng.normal(size=4 if temperature else 3)
    err = check_grad(lambda t: mixture_objective(t, P, logp, available, temperature)[0],
                     lambda t: mixture_objective(t, P, logp, available, temperature)[1], theta, epsilon=1e-7)
    assert err < 1e-5


def test_recovers_known_weights_and_temperature() -> None:
    rng = np.random.default_rng(1)
    A, B, C = (_dirichlet(rng, 40, 30) for _ in range(3))
    truth = np.log(0.3 * A + 0.7 * B)
    fit = fit_mixture([A, B, C], truth)
    np.testing.assert_allclose(fit.weights, [0.3, 0.7, 0.0], atol=2e-3)
    assert fit.temperature == pytest.approx(1.0, abs=2e-3) and fit.kl < 1e-5
    sharp = A**2 / (A**2).sum(axis=1, keepdims=True)
    fit = fit_mixture([A], np.log(sharp))
    assert fit.temperature == pytest.approx(0.5, abs=1e-3)
    q = apply_mixture([A], fit.weights, fit.temperature)
    np.testing.assert_allclose(q, sharp, atol=1e-5)


def test_abstaining_member_shares_its_weight() -> None:
    rng = np.random.default_rng(2)
    A, B = _dirichlet(rng, 3, 5), _dirichlet(rng, 3, 5)
    B[1] = 0.0
    available = np.array([[True] * 3, [True, False, True]])
    q = apply_mixture([A, B], np.array([0.25, 0.75]), 1.0, available)
    np.testing.assert_allclose(q[0], 0.25 * A[0] + 0.75 * B[0])
    np.testing.assert_allclose(q[1], A[1])
    with pytest.raises(ValueError, match="no member with positive weight is available"):
        apply_mixture([A, B], np.array([0.0, 1.0]), 1.0, available)


def test_prompt_cache_against_brute_force() -> None:
    V = 8
    prompts = [[1, 2, 3, 1, 2, 4, 1, 2], [5], [], [3, 3, 3, 3], [6, 7, 6, 0]]
    rows, available = prompt_cache(prompts, V, max_k=3, decay=0.5)
    for i, x in enumerate(prompts):
        if not x:
            assert not available[:, i].any()
            continue
        uni = np.zeros(V)
        for d, t in enumerate(reversed(x)):
            uni[t] += 0.5**d
        np.testing.assert_allclose(rows[0, i], uni / uni.sum())
        for k in (1, 2, 3):
            nxt = [x[j + 1] for j in range(k - 1, len(x) - 1) if x[j - k + 1 : j + 1] == x[-k:]]
            assert available[k, i] == bool(nxt)
            expected = np.bincount(nxt, minlength=V) / max(len(nxt), 1)
            np.testing.assert_allclose(rows[k, i], expected)


def _corpus(tmp: Path) -> str:
    import random

    rng = random.Random(0)
    words = "the city of paris is the capital and largest city of france on the river seine".split()
    path = tmp / "mix.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(rng.choice(words) for _ in range(40))})
                            + "\n" for i in range(30)))
    return str(path)


def test_mixture_fits_on_practice_truth_only(tiny_suite, tmp_path: Path) -> None:
    import tasks.suite
    from predictors import PredictorContext, create
    from predictors.base import view

    reads: list[str] = []
    original = tasks.suite.truth_loader

    def watched(suite, split: str):  # a spy on the real loader: records which truth the predictor side reads
        load = original(suite, split)

        def spied():
            reads.append(split)
            return load()

        return spied

    tasks.suite.truth_loader = watched
    try:
        ctx = PredictorContext.from_suite(tiny_suite)
        members = [{"name": "ngram", "options": {"corpora": _corpus(tmp_path), "order": 3}}, "unigram"]
        p = create("mixture", ctx, members=members)
        sealed = [view(x) for x in tiny_suite.prompts("sealed")]
        preds = p.predict(sealed)
    finally:
        tasks.suite.truth_loader = original
    assert reads and set(reads) == {"practice"}
    # and nothing the context holds leads back to the suite (its sealed truth would be one call away)
    cells = [c.cell_contents for f in (ctx.practice_truth, ctx.practice_prompts) for c in (f.__closure__ or ())]
    assert not any(c is tiny_suite for c in cells)

    # the fit is exactly fit_mixture on the practice truth, with the members' and the cache's practice rows
    practice = [view(x) for x in tiny_suite.prompts("practice")]
    rows, available = p.components(practice)
    _, logp, _ = tiny_suite.truth_split("practice")
    ref = fit_mixture(rows, logp, available=available)
    np.testing.assert_allclose(p.fit.weights, ref.weights, atol=1e-9)
    ident = p.identity()
    assert ident["fitted_on"] == len(practice) and p.approval_meta["approved"] is True  # level 0, by the one rule
    assert set(ident["weights"]) == {"ngram", "unigram", "cache-unigram", "copy-1", "copy-2", "copy-3", "copy-4"}
    q = np.stack([x.probs for x in preds])
    assert np.all(q > 0)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)


def test_mixture_bad_options(tiny_suite) -> None:
    from predictors import PredictorContext, create

    ctx = PredictorContext.from_suite(tiny_suite)
    with pytest.raises(ValueError, match="members is empty"):
        create("mixture", ctx, members=[])
    with pytest.raises(ValueError, match="cannot contain another 'mixture'"):
        create("mixture", ctx, members=["mixture"])
    with pytest.raises(KeyError, match="unknown predictor 'nope'"):
        create("mixture", ctx, members=["nope"], cache=False)
