"""Interpolated modified Kneser-Ney n-gram predictor on the target's token ids, with full-vocabulary output.

Formulas (Chen & Goodman 1998, "An empirical study of smoothing techniques", section 3.5; as in KenLM):

    p_k(w | h) = max(a_k(hw) - D_k(a_k(hw)), 0) / sum_x a_k(hx) + gamma_k(h) * p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h.) + D_k2 N2(h.) + D_k3 N3+(h.)) / sum_x a_k(hx)
    p_0(w) = 1 / V

``h'`` drops the oldest token of ``h``; ``a_k`` is the raw count at the highest order N and the continuation count
(number of distinct tokens seen before the k-gram) below it; N_r(h.) counts the words after ``h`` whose ``a_k`` is r
(3+ for r >= 3). Discounts per order from counts of counts n_r of ``a_k``: Y = n1 / (n1 + 2 n2),
D_k1 = 1 - 2Y n2/n1, D_k2 = 2 - 3Y n3/n2, D_k3 = 3 - 4Y n4/n3; when those are undefined or out of range on a tiny corpus
we fall back to KenLM's ``--discount_fallback`` values 0.5, 1, 1.5. A context never seen at order k passes the lower
order through unchanged (gamma = 1). Documents are modelled without sentence markers: n-grams never span two documents,
and an occurrence at a document start counts one distinct left neighbour (as if a begin marker preceded it).

Storage: for each order k, the distinct k-grams sorted by ``key = index of its (k-1)-gram prefix in order k-1 * V +
last token`` (a sorted-array trie), with ``alpha`` (the discounted first term) per k-gram and ``gamma`` per k-gram used as a
context. A query looks up the prompt's last 1..N-1 tokens with ``np.searchsorted`` for a whole batch, then builds each
full-vocabulary row as ``p = gamma * p`` plus a scatter of the children's ``alpha`` values: no loop over the
vocabulary. ``token_probs`` gives one token's probability per context by the same terms in the same order (the
trajectory fast path, ``predictors.chain_fast``). Left out: pruning, quantization, and a begin-of-document context
(prompts always have >= 16 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import PredictorContext, PromptView, register
from .format import Prediction
from .index import Step, TrainingText, load_or_build, resolve_corpora, training_text

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback


def discounts(adjusted: np.ndarray) -> tuple[float, float, float]:
    """Modified-KN discounts (D1, D2, D3+) from the adjusted counts of one order (Chen & Goodman eq. 26)."""
    n = [int(np.count_nonzero(adjusted == r)) for r in (1, 2, 3, 4)]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] else np.nan
        d = [r - (r + 1) * y * n[r] / n[r - 1] if n[r - 1] else np.nan for r in (1, 2, 3)]
    if not all(np.isfinite(x) and 0 < x < r for x, r in zip(d, (1, 2, 3), strict=True)):
        return FALLBACK_DISCOUNTS
    return float(d[0]), float(d[1]), float(d[2])


def build_tables(tokens: np.ndarray, offsets: np.ndarray, order: int, vocab_size: int,
                 step: Step = lambda name: None) -> dict[str, np.ndarray]:
    """The interpolated modified-KN tables of ``order`` over documents ``tokens[offsets[k]:offsets[k+1]]``.

    Returns ``keys{k}`` (int64, sorted), ``alpha{k}`` (float64) for k = 1..order, ``gamma{k}`` (float64) for
    k = 1..order-1 (the k-gram as a context of order k+1), ``unigram`` (dense p_1, float64) and ``discounts``.
    Stages (``step`` calls): 2 * order + 1.
    """
    V, T = vocab_size, tokens.size
    tokens = tokens.astype(np.int64)
    pos = np.arange(T, dtype=np.int64) - np.repeat(offsets[:-1], np.diff(offsets))  # position in its document
    keys, counts, index = [], [], []  # per order: sorted unique keys, raw counts, k-gram id ending at each position
    for k in range(1, order + 1):
        step(f"counting {k}-grams")
        valid = np.flatnonzero(pos >= k - 1)
        key = tokens if k == 1 else index[-1][valid - 1] * V + tokens[valid]
        uniq, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        idx = np.full(T, -1, dtype=np.int64)
        idx[valid if k > 1 else slice(None)] = inv.reshape(-1)
        keys.append(uniq)
        counts.append(cnt)
        index.append(idx)
    out: dict[str, np.ndarray] = {}
    disc = np.zeros((order, 3))
    adjusted = []
    for k in range(1, order + 1):
        if k == order:
            a = counts[k - 1]
        else:  # continuation counts: distinct (k+1)-grams with this suffix, plus one for a document-start occurrence
            valid = np.flatnonzero(pos >= k)
            suffix_of = np.empty(keys[k].size, dtype=np.int64)
            suffix_of[index[k][valid]] = index[k - 1][valid]
            a = np.bincount(suffix_of, minlength=keys[k - 1].size)
            a[np.unique(index[k - 1][pos == k - 1])] += 1
        adjusted.append(a)
    del index
    for k in range(1, order + 1):
        step(f"discounting {k}-grams")
        a = adjusted[k - 1]
        disc[k - 1] = discounts(a)
        d = np.array([0.0, *disc[k - 1]])[np.minimum(a, 3)]
        parent = keys[k - 1] // V  # index of the (k-1)-gram context; 0 = the empty context for k = 1
        n_ctx = 1 if k == 1 else keys[k - 2].size
        denom = np.bincount(parent, weights=a, minlength=n_ctx)
        mass = np.bincount(parent, weights=d, minlength=n_ctx)
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = np.where(denom > 0, mass / denom, 1.0)  # no continuation seen: pass the lower order through
        out[f"alpha{k}"] = (a - d) / denom[parent]
        out[f"keys{k}"] = keys[k - 1]
        if k == 1:
            uni = np.full(V, gamma[0] / V)
            uni[keys[0]] += out["alpha1"]
            out["unigram"] = uni
        else:
            out[f"gamma{k - 1}"] = gamma
    step("done")
    out["discounts"] = disc
    return out


class NGramModel:
    """Queries over the tables of ``build_tables``: full-vocabulary distributions for batches of contexts."""

    def __init__(self, tables: dict[str, np.ndarray], order: int, vocab_size: int) -> None:
        self.order, self.V = order, vocab_size
        # np.asarray drops the memmap subclass, whose per-slice bookkeeping would dominate small lookups
        self.keys = [np.asarray(tables[f"keys{k}"]) for k in range(1, order + 1)]
        self.alpha = [np.asarray(tables[f"alpha{k}"]) for k in range(1, order + 1)]
        self.gamma = [np.asarray(tables[f"gamma{k}"]) for k in range(1, order)]
        self.unigram = np.asarray(tables["unigram"])

    def find(self, contexts: np.ndarray, length: np.ndarray, m: int) -> np.ndarray:
        """Index in table m of each row's last m tokens (-1 if unseen or the row is shorter than m).

        ``contexts`` holds the last N-1 tokens of each prompt right-aligned (padding on the left)."""
        node = np.zeros(len(contexts), dtype=np.int64)
        ok = length >= m
        width = contexts.shape[1]
        for s in range(m):
            key = node * self.V + contexts[:, width - m + s]
            table = self.keys[s]
            at = np.minimum(np.searchsorted(table, key), table.size - 1)
            ok &= table[at] == key
            node = at
        return np.where(ok, node, -1)

    def _levels(self, contexts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(nodes, scale)`` of a batch of contexts: ``nodes`` (B, N-1) int64, the index of each row's length-m
        context in table m (column m-1; -1 if unseen), and ``scale`` (B, N) float64, where ``scale[:, m]`` =
        G_{m+1} ... G_{N-1} is the weight of level m+1's alphas (m = 0: of p_1) in the final probability."""
        B, N, width = len(contexts), self.order, max(self.order - 1, 1)
        ctx = np.zeros((B, width), dtype=np.int64)
        length = np.zeros(B, dtype=np.int64)
        for b, c in enumerate(contexts):
            tail = list(c)[-width:] if N > 1 else []
            if tail:
                ctx[b, width - len(tail):] = tail
            length[b] = len(tail)
        nodes = (np.stack([self.find(ctx, length, m) for m in range(1, N)], axis=1) if N > 1
                 else np.zeros((B, 0), dtype=np.int64))
        gammas = np.ones((B, N))  # column m: gamma of the length-m context (column 0 unused)
        for m in range(1, N):
            seen = nodes[:, m - 1] >= 0
            gammas[seen, m] = self.gamma[m - 1][nodes[seen, m - 1]]
        scale = np.cumprod(gammas[:, ::-1], axis=1)[:, ::-1]
        return nodes, np.concatenate([scale[:, 1:], np.ones((B, 1))], axis=1)

    def distributions(self, contexts: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(contexts), V) float64 rows: p(next token | context), each summing to 1.

        Unrolled recursion: p_N = A_N + G_{N-1} A_{N-1} + ... + (G_{N-1} ... G_1) p_1, where A_{m+1} is the scatter
        of the alphas of context h_m's continuations and G_m its gamma (1 when h_m is unseen), so each row is
        written once densely and then only at the continuations' token ids."""
        nodes, scale = self._levels(contexts)
        out = scale[:, 0:1] * self.unigram[None, :]
        for m in range(1, self.order):
            keys, alpha = self.keys[m], self.alpha[m]
            for b in np.flatnonzero(nodes[:, m - 1] >= 0):
                node = nodes[b, m - 1]
                lo, hi = np.searchsorted(keys, (node * self.V, (node + 1) * self.V))
                if hi > lo:
                    out[b, keys[lo:hi] % self.V] += scale[b, m] * alpha[lo:hi]
        return out

    def token_probs(self, contexts: Sequence[Sequence[int]], tokens: Sequence[int]) -> np.ndarray:
        """(len(contexts),) float64: p(tokens[i] | contexts[i]), without building a vocabulary-sized row.

        The same sum as ``distributions`` at one token, term by term in the same order (so the same float64 value
        as its entry): ``scale_0 p_1(w)`` plus, per level, ``scale_m alpha`` when (context, w) was seen there
        (one ``searchsorted`` per level for the whole batch). ``tokens`` must lie in ``[0, V)`` (``IndexError``)."""
        w = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if w.size != len(contexts):
            raise ValueError(f"{len(contexts)} contexts but {w.size} tokens")
        if w.size and (w.min() < 0 or w.max() >= self.V):
            raise IndexError(f"token id outside the vocabulary [0, {self.V})")
        nodes, scale = self._levels(contexts)
        out = scale[:, 0] * self.unigram[w]
        for m in range(1, self.order):
            node, table = nodes[:, m - 1], self.keys[m]
            if not table.size:
                continue
            key = node * self.V + w
            at = np.minimum(np.searchsorted(table, key), table.size - 1)
            hit = (node >= 0) & (table[at] == key)
            out[hit] += scale[hit, m] * self.alpha[m][at[hit]]
        return out


class NGramPredictor:
    """Predictor wrapper: full-vocabulary KN distributions for prompt views."""

    def __init__(self, name: str, model: NGramModel, manifest: dict[str, Any]) -> None:
        self.name, self.model, self.manifest = name, model, manifest

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        rows = self.model.distributions([p.token_ids for p in prompts])
        return [Prediction(p.id, probs=rows[i]) for i, p in enumerate(prompts)]

    def identity(self) -> dict[str, Any]:
        m = self.manifest
        return {"kind": "modified-kneser-ney", "order": self.model.order,
                "corpora": m["corpora"], "index": m["index"], "discounts": m["discounts"]}


def load_ngram(ctx: PredictorContext, *, order: int = 5, corpora: str | list[str] | None = "all",
               rebuild: bool = False, name: str = "ngram",
               text: TrainingText | None = None) -> tuple[NGramModel, dict[str, Any]]:
    """Load (or build, on first use) the KN tables for the context's split and the chosen corpora."""
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"ngram option order must be an integer >= 1, got {order!r}")
    V = ctx.vocab_size
    text = text or training_text(resolve_corpora(corpora, ctx.corpus), ctx, vocab_size=V)
    params = {"order": order, "vocab_size": V}
    hint = f"Rebuild it with `logitpred predictors build {name} --suite {ctx.suite} --rebuild`."
    tables, manifest = load_or_build(
        "ngram", params, text, lambda t, step: build_tables(t.tokens, t.offsets, order, V, step),
        stages=2 * order + 1, rebuild_hint=hint, rebuild=rebuild,
        provenance={"seed": ctx.seed, "heldout_fraction": ctx.heldout_fraction,
                    "tokenizer_sha256": ctx.tokenizer_sha256, "vocab_size": V})
    manifest = {**manifest, "discounts": np.asarray(tables["discounts"]).round(4).tolist()}
    return NGramModel(tables, order, V), manifest


@register("ngram")
def ngram(ctx: PredictorContext, *, order: int = 5, corpora: str | list[str] = "all",
          rebuild: bool = False) -> NGramPredictor:
    """Modified-KN n-gram on the train parts of wiki, news and sotu (and the suite's own corpus)."""
    model, manifest = load_ngram(ctx, order=order, corpora=corpora, rebuild=rebuild, name="ngram")
    return NGramPredictor("ngram", model, manifest)


@register("ngram-domain")
def ngram_domain(ctx: PredictorContext, *, order: int = 5, rebuild: bool = False) -> NGramPredictor:
    """Modified-KN n-gram on the train part of the suite's own corpus only (in-domain text)."""
    model, manifest = load_ngram(ctx, order=order, corpora="suite", rebuild=rebuild, name="ngram-domain")
    return NGramPredictor("ngram-domain", model, manifest)
