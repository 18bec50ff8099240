"""Prompt-cache components: next-token statistics of the prompt's own tokens, for the fitted mixture.

Documents repeat themselves (names, terms, phrases), and language models copy from their context, so the prompt is
a corpus worth counting too (the "cache" language model of Kuhn & De Mori 1990). For a prompt x_1..x_n:

- ``cache-unigram``: the prompt's tokens, the one at distance d from the end weighted ``decay ** d``, normalised;
- ``copy-k`` (k = 1..max_k): the tokens that followed earlier occurrences, inside the prompt, of its last k tokens
  (x_{j+1} for every j < n with x_{j-k+1..j} = x_{n-k+1..n}), normalised counts.

A ``copy-k`` component *abstains* on a prompt where the last k tokens never occurred before; the mixture then shares
its weight among the other members (``predictors.mixture.apply_mixture``'s ``available`` mask). The components are
sparse and zero almost everywhere, so they only ever enter a mixture next to a strictly positive member (the n-gram).
Like the n-gram they run no model and read nothing but the prompt. Left out: cache n-grams smoothed on their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DECAY = 0.98
MAX_K = 4


def component_names(max_k: int = MAX_K) -> list[str]:
    return ["cache-unigram", *(f"copy-{k}" for k in range(1, max_k + 1))]


def prompt_cache(contexts: Sequence[Sequence[int]], vocab_size: int, *, max_k: int = MAX_K,
                 decay: float = DECAY) -> tuple[np.ndarray, np.ndarray]:
    """(rows (1 + max_k, n, V) float64, available (1 + max_k, n) bool) in the order of ``component_names``.

    Rows of available components sum to 1; rows of abstaining ones are all zero. An empty prompt gives nothing:
    its ``cache-unigram`` abstains as well."""
    n = len(contexts)
    rows = np.zeros((1 + max_k, n, vocab_size))
    available = np.zeros((1 + max_k, n), dtype=bool)
    for i, c in enumerate(contexts):
        x = np.asarray(c, dtype=np.int64)
        L = x.size
        if L == 0:
            continue
        np.add.at(rows[0, i], x, decay ** np.arange(L - 1, -1, -1, dtype=np.float64))
        rows[0, i] /= rows[0, i].sum()
        available[0, i] = True
        j = np.arange(L - 1)  # earlier positions that have a successor inside the prompt
        match = np.ones(L - 1, dtype=bool)  # x[j-k+1..j] == x[L-k..L-1] so far
        for k in range(1, max_k + 1):
            match &= j >= k - 1
            match[match] &= x[j[match] - (k - 1)] == x[L - k]
            if not match.any():
                break
            np.add.at(rows[k, i], x[j[match] + 1], 1.0)
            rows[k, i] /= rows[k, i].sum()
            available[k, i] = True
    return rows, available


def longest_prompt_match(tokens: Sequence[int], max_len: int = 256) -> tuple[int, np.ndarray, np.ndarray]:
    """(L, token ids, counts): the longest suffix x_{n-L+1..n} that also occurs earlier in the prompt (followed by a
    token inside it), and the tokens that followed its earlier occurrences. L = 0 (and empty arrays) if none."""
    x = np.asarray(tokens, dtype=np.int64)
    n = x.size
    j = np.arange(max(n - 1, 0))
    match = np.ones(j.size, dtype=bool)
    best = (0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    for k in range(1, min(n - 1, max_len) + 1):
        match &= j >= k - 1
        match[match] &= x[j[match] - (k - 1)] == x[n - k]
        if not match.any():
            break
        tok, cnt = np.unique(x[j[match] + 1], return_counts=True)
        best = (k, tok, cnt)
    return best
