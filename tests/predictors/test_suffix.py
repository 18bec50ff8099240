"""Longest-suffix match: suffix array order, longest matches and continuation counts against brute force, and the
interpolated predictor (no zero probabilities, n-gram unchanged below the n-gram's order)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from predictors.cache import longest_prompt_match
from predictors.ngram import NGramModel, build_tables
from predictors.suffix import SuffixIndex, SuffixPredictor, build_suffix_array


def _docs(seed: int, n: int = 30, alphabet: int = 4) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(alphabet) for _ in range(rng.randint(1, 30))] for _ in range(n)]


def _flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([t for d in docs for t in d], dtype=np.int64),
            np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64))


def brute_force(docs: list[list[int]], query: list[int], min_count: int) -> tuple[int, int, Counter]:
    """Longest suffix of ``query`` with >= min_count occurrences inside documents; its count and successors."""
    best = (0, sum(len(d) for d in docs) + len(docs) + 1, Counter())
    for L in range(1, len(query) + 1):
        pat = query[-L:]
        occ = [(d, i) for d in docs for i in range(len(d) - L + 1) if d[i : i + L] == pat]
        if len(occ) < min_count:
            break
        best = (L, len(occ), Counter(d[i + L] for d, i in occ if i + L < len(d)))
    return best


def test_suffix_array_sorts_the_reversed_documents() -> None:
    docs = _docs(0, n=8)
    arrays = build_suffix_array(*_flat(docs), vocab_size=4)
    rev, sa = arrays["rev"].tolist(), arrays["sa"].tolist()
    assert rev[0] == 4 and rev[-1] == 4 and rev.count(4) == len(docs) + 1  # separators
    assert sa == sorted(range(len(rev)), key=lambda i: rev[i:])


@pytest.mark.parametrize("min_count", [1, 3])
def test_longest_match_and_continuations_match_brute_force(min_count: int) -> None:
    docs = _docs(1)
    arrays = build_suffix_array(*_flat(docs), vocab_size=4)
    index = SuffixIndex(arrays["rev"], arrays["sa"], 4)
    rng = random.Random(2)
    queries = [docs[3][:10], docs[7], [3, 3, 3, 3, 3, 3], [0], []] + [
        [rng.randrange(4) for _ in range(rng.randint(1, 12))] for _ in range(40)]
    for q in queries:
        L, lo, hi = index.longest_match(q, min_count)
        exp_L, exp_count, exp_next = brute_force(docs, q, min_count)
        assert L == exp_L, q
        if L:
            assert hi - lo == exp_count
            tok, cnt = index.continuations(lo, hi)
            assert dict(zip(tok.tolist(), cnt.tolist(), strict=True)) == dict(exp_next)


def test_predictor_blends_long_matches_and_never_gives_zero() -> None:
    V, order = 6, 2
    docs = _docs(3, alphabet=5)
    docs.append([5, 0, 1, 2, 3, 4, 5, 0])  # token 5 is rare: a long match on this document is unambiguous
    tokens, offsets = _flat(docs)
    arrays = build_suffix_array(tokens, offsets, V)
    ngram = NGramModel(build_tables(tokens, offsets, order, V), order, V)
    p = SuffixPredictor("suffix", SuffixIndex(arrays["rev"], arrays["sa"], V), ngram, {}, beta=1.0, min_count=1,
                        prompt=False)
    from predictors.base import PromptView

    long_ctx = (0, 1, 2, 3, 4, 5)  # occurs once, followed by 0
    short_ctx = (5, 5)  # only the last token matches: below the n-gram's order the n-gram is returned unchanged
    preds = p.predict([PromptView("a", "", long_ctx), PromptView("b", "", short_ctx)])
    base = ngram.distributions([long_ctx, short_ctx])
    assert p.last_matches[0][0] >= order
    lam = 1 / (1 + 1.0)  # one continuation, beta = 1
    expected = (1 - lam) * base[0]
    expected[0] += lam
    np.testing.assert_allclose(preds[0].probs, expected, atol=1e-15)
    assert p.last_matches[1][0] == 1
    np.testing.assert_array_equal(preds[1].probs, base[1])
    for pr in preds:
        assert np.all(pr.probs > 0) and pr.probs.sum() == pytest.approx(1.0, abs=1e-12)

    # with the prompt searched too: "5 5" occurred earlier in this prompt, followed by 1 and then by 5
    p.prompt = True
    ctx = (5, 5, 1, 5, 5, 5)
    pred = p.predict([PromptView("c", "", ctx)])[0].probs
    assert p.last_matches[0] == (1, 2)
    lam = min(0.1 * 2, 0.4)
    expected = (1 - lam) * ngram.distributions([ctx])[0]
    expected[[1, 5]] += lam * 0.5
    np.testing.assert_allclose(pred, expected, atol=1e-15)


def test_longest_prompt_match_against_brute_force() -> None:
    rng = random.Random(5)
    for _ in range(200):
        x = [rng.randrange(3) for _ in range(rng.randint(0, 15))]
        L, tok, cnt = longest_prompt_match(x)
        exp_L, nxt = 0, Counter()
        for k in range(1, len(x)):
            occ = [j for j in range(k - 1, len(x) - 1) if x[j - k + 1 : j + 1] == x[-k:]]
            if not occ:
                break
            exp_L, nxt = k, Counter(x[j + 1] for j in occ)
        assert L == exp_L and dict(zip(tok.tolist(), cnt.tolist(), strict=True)) == dict(nxt), x


def test_factory_rejects_bad_options(tiny_suite) -> None:
    from predictors import PredictorContext, create

    ctx = PredictorContext.from_suite(tiny_suite)
    with pytest.raises(ValueError, match="beta must be a number > 0"):
        create("suffix", ctx, beta=0)
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        create("suffix", ctx, min_count=0)
