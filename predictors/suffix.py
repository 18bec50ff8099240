"""Longest-suffix-match predictor (infini-gram style), interpolated with the Kneser-Ney n-gram so no token gets zero.

For a prompt x_1..x_n it finds the longest suffix x_{n-L+1}..x_n that occurs in the train text at least ``min_count``
times (Liu et al. 2024, "Infini-gram"), and takes the empirical distribution of the tokens that followed those
occurrences. That distribution adds information only when the match is longer than the n-gram's context (L >= order);
shorter matches are exactly what the n-gram's top orders already count. The prompt's own earlier text is searched the
same way (a language model copies from its context, and at 5.6M train tokens the train-text matches are short: median
2 tokens on wiki prompts), giving the followers of the longest suffix that occurred earlier in the prompt (L_p tokens).

    r(w) = (1 - lambda_c) p_ngram(w | x) + lambda_c c(w) / C,      lambda_c = C / (C + beta) if L >= order else 0
    q(w) = (1 - lambda_p) r(w) + lambda_p c_p(w) / C_p,            lambda_p = min(prompt_step * L_p, prompt_cap)

with C the number of train occurrences followed by a token (an occurrence at a document end has none), c_p / C_p the
same inside the prompt. ``beta`` = 20, ``prompt_step`` = 0.1 and ``prompt_cap`` = 0.4 were chosen on the *practice*
splits of wiki, news and sotu (never the sealed ones; see docs/corpus-statistics.md). ``prompt=False`` leaves the
prompt out (pure train-text matching).

Index: the suffix array of the *reversed* train text, every document reversed and preceded by a separator (token id V,
never a real token) plus one at the end. Extending a reversed pattern by one token (the prompt's next older token)
narrows the current suffix-array range, so the longest match costs two binary searches per matched token, and the
successor of an occurrence at reversed position s is the token at s - 1. The suffix array comes from pydivsufsort
(Python bindings of Yuta Mori's libdivsufsort, an O(n log n) suffix sorter in C that handles 16/32-bit alphabets and
~5.6M tokens in seconds), already a dependency; writing a suffix sorter by hand would be slower and riskier.
Left out: the infini-gram engine itself (its indexes are built for billions of tokens with a C++ builder and on-disk
shards, overkill at this scale) and counts for any suffix but the longest.
"""

from __future__ import annotations

import array
import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import PredictorContext, PromptView, register
from .cache import longest_prompt_match
from .format import Prediction
from .index import Step, TrainingText, load_or_build, resolve_corpora, training_text
from .ngram import NGramModel, load_ngram

MAX_MATCH = 256  # longest suffix compared, in tokens: longer matches are duplicated documents, already decisive


def build_suffix_array(tokens: np.ndarray, offsets: np.ndarray, vocab_size: int,
                       step: Step = lambda name: None) -> dict[str, np.ndarray]:
    """``rev``: separator + reversed document, for each document, then a final separator; ``sa``: its suffix array."""
    from pydivsufsort import divsufsort

    step("reversing documents")
    dtype = np.uint16 if vocab_size < np.iinfo(np.uint16).max else np.uint32
    n_docs = offsets.size - 1
    rev = np.full(tokens.size + n_docs + 1, vocab_size, dtype=dtype)
    lengths = np.diff(offsets)
    starts = offsets[:-1] + np.arange(n_docs) + 1  # where document k's reversed block starts in rev
    # position of token j (of document k, at offset i within it) in rev: starts[k] + (len_k - 1 - i)
    doc = np.repeat(np.arange(n_docs), lengths)
    within = np.arange(tokens.size) - offsets[:-1][doc]
    rev[starts[doc] + lengths[doc] - 1 - within] = tokens
    step("sorting suffixes (libdivsufsort)")
    sa = divsufsort(rev)
    step("done")
    return {"rev": rev, "sa": sa.astype(np.int32 if rev.size < 2**31 else np.int64)}


class SuffixIndex:
    """Longest-match lookups over a reversed-text suffix array."""

    def __init__(self, rev: np.ndarray, sa: np.ndarray, vocab_size: int) -> None:
        self.rev, self.sa, self.V = np.asarray(rev), np.asarray(sa), vocab_size
        # array.array: compact like numpy, but indexing returns plain ints, several times cheaper in bisect's probes
        self._rev = array.array("I", self.rev.astype(np.uint32).tobytes())
        self._sa = array.array("q", self.sa.astype(np.int64).tobytes())

    def longest_match(self, tokens: Sequence[int], min_count: int = 1,
                      max_len: int = MAX_MATCH) -> tuple[int, int, int]:
        """(L, lo, hi): the longest suffix of ``tokens`` (L tokens) occurring >= ``min_count`` times, and its
        suffix-array range. L = 0 means not even the last token occurs that often (range = everything)."""
        rev, sa = self._rev, self._sa
        lo, hi, L = 0, len(sa), 0
        n = len(tokens)
        while L < min(n, max_len):
            t = tokens[n - 1 - L]

            def key(s: int, L: int = L) -> int:  # the (L+1)-th token of the suffix at s: all share the first L
                return rev[s + L]

            new_lo = bisect.bisect_left(sa, t, lo, hi, key=key)
            new_hi = bisect.bisect_right(sa, t, new_lo, hi, key=key)
            if new_hi - new_lo < min_count:
                break
            lo, hi, L = new_lo, new_hi, L + 1
        return L, lo, hi

    def continuations(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, counts) of the tokens that followed the occurrences in ``sa[lo:hi]`` (separators dropped)."""
        nxt = self.rev[self.sa[lo:hi].astype(np.int64) - 1]
        nxt = nxt[nxt != self.V]
        tok, cnt = np.unique(nxt, return_counts=True)
        return tok.astype(np.int64), cnt


def load_suffix_index(ctx: PredictorContext, *, corpora: str | list[str] | None = "all", rebuild: bool = False,
                      name: str = "suffix", text: TrainingText | None = None) -> tuple[SuffixIndex, dict[str, Any]]:
    V = ctx.vocab_size
    text = text or training_text(resolve_corpora(corpora, ctx.corpus), ctx, vocab_size=V)
    hint = f"Rebuild it with `logitpred predictors build {name} --suite {ctx.suite} --rebuild`."
    arrays, manifest = load_or_build(
        "suffix", {"vocab_size": V}, text, lambda t, step: build_suffix_array(t.tokens, t.offsets, V, step),
        stages=3, rebuild_hint=hint, rebuild=rebuild,
        provenance={"seed": ctx.seed, "heldout_fraction": ctx.heldout_fraction,
                    "tokenizer_sha256": ctx.tokenizer_sha256, "vocab_size": V})
    return SuffixIndex(arrays["rev"], arrays["sa"], V), manifest


class SuffixPredictor:
    """Longest suffix match interpolated with a KN n-gram trained on the same text."""

    def __init__(self, name: str, index: SuffixIndex, ngram: NGramModel, manifests: dict[str, Any], *,
                 beta: float, min_count: int, prompt: bool = True, prompt_step: float = 0.1,
                 prompt_cap: float = 0.4) -> None:
        self.name, self.index, self.ngram, self.manifests = name, index, ngram, manifests
        self.beta, self.min_count = beta, min_count
        self.prompt, self.prompt_step, self.prompt_cap = prompt, prompt_step, prompt_cap
        self.last_matches: list[tuple[int, int]] = []  # (train-text L, in-prompt L_p) per prompt of the last batch

    def mix(self, tokens: Sequence[int], row: np.ndarray) -> tuple[int, int]:
        """Blend the suffix distributions of ``tokens`` into the n-gram ``row`` in place; returns (L, L_p)."""
        L, lo, hi = self.index.longest_match(tokens, self.min_count)
        if L >= self.ngram.order:
            tok, cnt = self.index.continuations(lo, hi)
            C = int(cnt.sum())
            if C:
                lam = C / (C + self.beta)
                row *= 1.0 - lam
                row[tok] += lam * cnt / C
        Lp = 0
        if self.prompt:
            Lp, tok, cnt = longest_prompt_match(tokens)
            if Lp:
                lam = min(self.prompt_step * Lp, self.prompt_cap)
                row *= 1.0 - lam
                row[tok] += lam * cnt / cnt.sum()
        return L, Lp

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        rows = self.ngram.distributions([p.token_ids for p in prompts])
        self.last_matches = [self.mix(p.token_ids, rows[i]) for i, p in enumerate(prompts)]
        return [Prediction(p.id, probs=rows[i]) for i, p in enumerate(prompts)]

    def identity(self) -> dict[str, Any]:
        return {"kind": "longest-suffix-match+kneser-ney", "order": self.ngram.order, "beta": self.beta,
                "min_count": self.min_count, "prompt": self.prompt, "prompt_step": self.prompt_step,
                "prompt_cap": self.prompt_cap, "corpora": self.manifests["suffix"]["corpora"],
                "index": [m["index"] for m in self.manifests.values()]}


@register("suffix")
def suffix(ctx: PredictorContext, *, order: int = 5, corpora: str | list[str] = "all", beta: float = 20.0,
           min_count: int = 1, prompt: bool = True, prompt_step: float = 0.1, prompt_cap: float = 0.4,
           rebuild: bool = False) -> SuffixPredictor:
    """Longest suffix match over the train parts of wiki, news and sotu and over the prompt itself, interpolated with
    the ``ngram`` predictor."""
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"suffix option beta must be a number > 0, got {beta!r}")
    if not (isinstance(min_count, int) and min_count >= 1):
        raise ValueError(f"suffix option min_count must be an integer >= 1, got {min_count!r}")
    if not (0 <= prompt_step and 0 <= prompt_cap < 1):
        raise ValueError(f"suffix options need prompt_step >= 0 and 0 <= prompt_cap < 1, got {prompt_step}, {prompt_cap}")
    text = training_text(resolve_corpora(corpora, ctx.corpus), ctx, vocab_size=ctx.vocab_size)
    index, m_suffix = load_suffix_index(ctx, rebuild=rebuild, text=text)
    model, m_ngram = load_ngram(ctx, order=order, rebuild=rebuild, name="suffix", text=text)
    return SuffixPredictor("suffix", index, model, {"suffix": m_suffix, "ngram": m_ngram},
                           beta=float(beta), min_count=min_count, prompt=bool(prompt),
                           prompt_step=float(prompt_step), prompt_cap=float(prompt_cap))
