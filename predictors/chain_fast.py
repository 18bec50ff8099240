"""Built-in fast paths for whole-continuation questions (registered with ``predictors.chain.register_fast_path``).

- **n-gram** (``NGramPredictor``: ``ngram``, ``ngram-domain``): every step's ``q_t(y_t)`` straight from the index,
  ``NGramModel.token_probs`` on the contexts ``x + y_<t`` (one ``searchsorted`` per order for all steps of all
  questions at once), never a vocabulary-sized row. The same numbers as the generic chain rule, which reads the same
  entry of the full row ``distributions`` builds (identical float64 terms in the same order; the generic path then
  divides by the row's sum, 1 within ~1e-15).
- **helper models** (``ModelPredictor``: ``model``, ``gemma3-270m``, ``tiny-helper``): P(continuation text | prompt
  text) from one teacher-forced forward pass of the helper (``tasks.continuations.chain_rule_truth``, the machinery of
  the target's chain-rule truth, on the helper: it is a causal LM, and never the target, which ``ModelPredictor``
  refuses to load) in the helper's own tokenization: the prompt is ``x_h = encode(prompt text)``, the continuation
  ``y_h`` the tokens of ``encode(prompt text + continuation text)`` after ``x_h``. Each helper step gets the
  predictor's smoothing floor, ``q = (1 - s) p_helper + s w``: with the target's tokenizer ``p_helper`` is renormalized
  over the target's vocabulary and ``w`` is the rest rule's weight of the token, exactly the generic path's
  distribution (so the two agree to float32 rounding); with another tokenizer ``w = 1 / (helper vocabulary)``.
  **Exact in the helper's tokenization; approximate relative to the target's**: the helper's tokens are not the
  target's, so its per-step factors are not the target's steps (no ``steps`` are given then), while the generic path
  approximates differently, by mapping each step's distribution onto the target's first tokens
  (``predictors.crosstok``). A question whose helper tokenization of prompt + continuation does not extend the
  prompt's (a merge across the boundary) or leaves no continuation token, or whose continuation alone overflows the
  helper's window, is left to the generic chain rule, and a note says so. When prompt + continuation exceed the
  helper's window (``max_context``, the model's context), the prompt's oldest tokens are dropped so the whole
  continuation fits in one pass; the generic path's per-step windows then keep up to ``m - 1`` more prompt tokens at
  early steps, so the two differ by that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .chain import TrajectoryQuestion, register_fast_path
from .model import ModelPredictor, load_helper
from .ngram import NGramPredictor
from .trajectory_format import TrajectoryPrediction

HELPER_CHUNK = 64  # questions per chain_rule_truth call (bounds the full rows kept: chunk x M x vocab float32)


def _answer(q: TrajectoryQuestion, steps: np.ndarray, with_steps: bool = True) -> TrajectoryPrediction:
    s = np.minimum(np.asarray(steps, dtype=np.float64), 0.0)
    return TrajectoryPrediction(q.prompt.id, q.continuation_id, min(math.fsum(s), 0.0),
                                tuple(float(x) for x in s) if with_steps else None)


@register_fast_path(NGramPredictor, "n-gram index: q(y_t | x + y_<t) looked up per step (NGramModel.token_probs)")
def ngram_answers(predictor: NGramPredictor, questions: Sequence[TrajectoryQuestion], *, batch_size: int = 0,
                  notes: list[str] | None = None) -> list[TrajectoryPrediction | None]:
    """Every question from the n-gram's index (module doc); ``batch_size`` and ``notes`` are unused (all steps go in
    one vectorized query, and every question is answered)."""
    model = predictor.model
    width = max(model.order - 1, 1)
    contexts, tokens, offsets = [], [], [0]
    for q in questions:
        x, y = q.prompt.token_ids[-width:], q.token_ids
        for t in range(len(y)):
            contexts.append((x + y[:t])[-width:])
            tokens.append(y[t])
        offsets.append(len(tokens))
    with np.errstate(divide="ignore"):
        logp = np.log(model.token_probs(contexts, tokens)) if tokens else np.zeros(0)
    return [_answer(q, logp[offsets[i] : offsets[i + 1]]) for i, q in enumerate(questions)]


def _helper_inputs(predictor: ModelPredictor, helper: Any, questions: Sequence[TrajectoryQuestion],
                   notes: list[str]) -> list[tuple[list[int], list[int]] | None]:
    """Per question ``(x_h, y_h)`` in the helper's tokens, the prompt cut to fit the window, or None (module doc)."""
    from tasks.forward import model_context
    from tasks.tokens import encode_text

    if predictor.same_tokenizer:
        pairs = [(list(q.prompt.token_ids), list(q.token_ids)) for q in questions]
    else:
        xs = encode_text(helper.tokenizer, [q.prompt.text for q in questions])
        fulls = encode_text(helper.tokenizer, [q.prompt.text + q.text for q in questions])
        pairs = [(x, f[len(x):]) for x, f in zip(xs, fulls, strict=True)]
        bad = [i for i, (x, f) in enumerate(zip(xs, fulls, strict=True)) if f[: len(x)] != x or len(f) == len(x)]
        if bad:
            q = questions[bad[0]]
            notes.append(f"{predictor.name}: for {len(bad)} question(s) the helper's tokenization of prompt + "
                         f"continuation does not extend the prompt's (e.g. {q.continuation_id!r}: prompt ends "
                         f"{xs[bad[0]][-3:]}, prompt + continuation gives {fulls[bad[0]][len(xs[bad[0]]) - 3:]}); "
                         "they go the generic way")
        for i in bad:
            pairs[i] = None
    limits = [c for c in (predictor.max_context, model_context(helper.model.config)) if c]
    if limits:
        limit, over = min(limits), []
        for i, pair in enumerate(pairs):
            if pair is None:
                continue
            # the model sees bos + prompt + y[:-1], but chain_rule_truth checks bos + prompt + y against its context
            room = limit - len(helper.bos_ids) - len(pair[1])
            if room < 1:
                over.append(i)
                pairs[i] = None
            else:
                pairs[i] = (pair[0][-room:], pair[1])
        if over:
            notes.append(f"{predictor.name}: {len(over)} continuation(s) do not fit the helper's window of {limit} "
                         "tokens with any prompt token; they go the generic way")
    return pairs


@register_fast_path(ModelPredictor, "helper model: P(continuation text | prompt text), one teacher-forced pass in the "
                                    "helper's tokenization (exact there, approximate relative to the target's)")
def helper_answers(predictor: ModelPredictor, questions: Sequence[TrajectoryQuestion], *, batch_size: int = 0,
                   notes: list[str] | None = None) -> list[TrajectoryPrediction | None]:
    """Every question the helper can take in one pass (module doc), forward passes of ``predictor.batch_size`` rows
    (``batch_size``, the prompts per predictor call, is not used). ``steps`` are given only with the target's
    tokenizer (then they are the target's steps). Raises what ``chain_rule_truth`` raises (``TargetError`` for a
    model that cannot give exact distributions)."""
    from tasks.continuations import Item, chain_rule_truth
    from tasks.forward import output_vocab

    notes = notes if notes is not None else []
    helper = load_helper(predictor.path, device=predictor.device, dtype=predictor.dtype)
    pairs = _helper_inputs(predictor, helper, questions, notes)
    same, s, V = predictor.same_tokenizer, predictor.smoothing, predictor.ctx.vocab_size
    floor = (predictor.ctx.background if predictor.rest == "unigram" else np.full(V, 1.0 / V)) if same else None
    helper_vocab = output_vocab(helper.model)
    out: list[TrajectoryPrediction | None] = [None] * len(questions)
    todo = [i for i, pair in enumerate(pairs) if pair is not None]
    for c in range(0, len(todo), HELPER_CHUNK):
        idx = todo[c : c + HELPER_CHUNK]
        items = [Item(pairs[i][0], pairs[i][1], same) for i in idx]
        truths = chain_rule_truth(helper.model, items, bos_ids=helper.bos_ids, batch_size=predictor.batch_size,
                                  pad_id=helper.pad_id)
        for i, tr in zip(idx, truths, strict=True):
            y = np.asarray(tr.token_ids, dtype=np.int64)
            if same:  # the generic path's distribution at y_t: renormalized over the target's vocabulary, smoothed
                lp = tr.full.astype(np.float64)
                top = lp[:, :V].max(axis=1)
                lse = top + np.log(np.exp(lp[:, :V] - top[:, None]).sum(axis=1))
                q = (1.0 - s) * np.exp(lp[np.arange(len(y)), y] - lse) + s * floor[y]
            else:
                q = (1.0 - s) * np.exp(tr.step_logprobs.astype(np.float64)) + s / helper_vocab
            out[i] = _answer(questions[i], np.log(q), with_steps=same)
    return out

