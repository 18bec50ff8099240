"""The reference model R of a search: how plausible a prompt is, log P_R(x | prefix), and (same tokenizer only) R's
next-token proposals.

Two cases (``Reference``):

- **R shares the target's tokenizer** (R is the target itself, or a helper with the same tokenizer sha256): x's own
  ids are scored, ``log P_R(x | bos, prefix) = sum_i log p_R(x_i | bos, prefix, x_<i)``, from one pass per prompt with
  the head's (BOS + prefix) KV cache reused (``tasks.rare.scorer.PrefixRunner``); the head's last next-token
  distribution (what predicts ``x_0``) is computed once. A head that is empty (SmolLM2 has no BOS; no prefix) leaves
  ``x_0`` unconditioned: it is not scored, and the per-token mean is over the ``k - 1`` others.
- **R has another tokenizer** (a helper such as Gemma 3): the prompt's *text* is scored in R's tokenization,
  ``log P_R(text(prefix + x)) - log P_R(text(prefix))`` (each the chain rule over ``bos_R + encode_R(text)``; exactly
  ``log P_R(x_text | prefix_text)`` when R's tokens do not straddle the boundary, otherwise the difference of the two
  strings' canonical-tokenization log-probabilities). No per-position proposals exist in the target's vocabulary.

Per-token plausibility is the total divided by the number of target tokens of x scored (``k``, or ``k - 1`` for an
unconditioned first token), so λ means the same whatever R's tokenizer.

Passes: every prompt scored is one pass of R (``passes``). The head's one pass, shared by every prompt, is not counted,
as ``BehaviourScorer`` does not count its prefix cache. Whether R's passes count against the search budget is the
caller's rule (``tasks.search.objective``: yes when R is the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Reference:
    """R: ``model`` (a causal LM), its ``tokenizer`` and ``bos`` ids, ``identity`` (recorded with every result; must
    hold ``"kind"``: ``"target"`` or ``"helper"``), and the target's ``template`` (``tasks.search.template``).
    ``is_target``: R is the target model itself (its passes are target passes). ``same_tokenizer``: R scores the
    target's ids directly (module doc); decided by the caller from the tokenizers' sha256."""

    def __init__(self, model: Any, tokenizer: Any, bos: Sequence[int], identity: dict[str, Any], template: Any, *,
                 is_target: bool, same_tokenizer: bool, batch_size: int = 32) -> None:
        from ..rare.scorer import PrefixRunner

        self.model, self.tokenizer, self.bos = model, tokenizer, list(bos)
        self.identity, self.template = dict(identity), template
        self.is_target, self.same_tokenizer, self.batch_size = is_target, same_tokenizer, batch_size
        self.passes = 0
        self.head = self.bos + list(template.prefix) if same_tokenizer else []
        self.runner = PrefixRunner(model, self.head) if same_tokenizer else None
        self._head_logp: np.ndarray | None = None
        self._prefix_lp: float | None = None

    # --- same tokenizer ---------------------------------------------------------------------------------------------
    def head_logprobs(self) -> np.ndarray | None:
        """``(V,)`` float64 log p_R(. | bos, prefix), or ``None`` for an empty head. One pass the first time, not
        counted (module doc)."""
        import torch

        if not self.head:
            return None
        if self._head_logp is None:
            with torch.inference_mode():
                ids = torch.tensor([self.head], device=self.runner.device)
                logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
            self._head_logp = torch.log_softmax(logits.float(), -1).double().cpu().numpy()
        return self._head_logp

    def step_logprobs(self, free: np.ndarray) -> np.ndarray:
        """Same tokenizer only: log p_R ``(n, i, V)`` float32 after each free position of ``free`` ``(n, i)``
        (``[:, j]`` predicts ``x_{j+1}``). One pass per row."""
        import torch

        outs = []
        for a in range(0, len(free), self.batch_size):
            rows = torch.as_tensor(free[a : a + self.batch_size])
            logits = self.runner.logits(rows, keep=rows.shape[1])
            outs.append(torch.log_softmax(logits.float(), -1).cpu().numpy())
            self.passes += len(rows)
        return np.concatenate(outs)

    def positions(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Same tokenizer only: ``(per-position log p_R(x_j | head, x_<j) (n, i), next-token log-probs after x
        (n, V))``; position 0 is ``nan`` when the head is empty. One pass per row."""
        free = np.asarray(free, dtype=np.int64)
        n, i = free.shape
        head = self.head_logprobs()
        lp = self.step_logprobs(free)  # (n, i, V): lp[:, j] predicts x_{j+1}
        pos = np.full((n, i), np.nan)
        if head is not None:
            pos[:, 0] = head[free[:, 0]]
        if i > 1:
            pos[:, 1:] = np.take_along_axis(lp[:, :-1], free[:, 1:, None], axis=-1)[..., 0]
        return pos, lp[:, -1].astype(np.float64)

    def next_logprobs(self, free: np.ndarray) -> np.ndarray:
        """Same tokenizer only: ``(n, V)`` log p_R(. | head, x) after each row of ``free`` ``(n, i)``; for ``i = 0``
        the head's distribution (uniform over the vocabulary for an empty head), one row per requested row."""
        free = np.asarray(free, dtype=np.int64)
        if free.shape[1] == 0:
            head = self.head_logprobs()
            v = int(self.model.get_output_embeddings().weight.shape[0])
            row = head if head is not None else np.full(v, -np.log(v))
            return np.repeat(row[None], len(free), axis=0)
        return self.positions(free)[1]

    # --- any tokenizer ----------------------------------------------------------------------------------------------
    def _text_logprob(self, texts: list[str]) -> np.ndarray:
        """Chain-rule log P_R of each text's R tokens after ``bos_R`` (first token unscored without a BOS), float64."""
        import torch

        from ..tokens import encode_text

        out = np.zeros(len(texts))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = [self.bos + encode_text(self.tokenizer, t) for t in texts]
        for a in range(0, len(ids), self.batch_size):
            chunk = ids[a : a + self.batch_size]
            w = max(len(r) for r in chunk)
            if w < 2:
                self.passes += len(chunk)
                continue
            inp = torch.full((len(chunk), w), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), w), dtype=torch.long)
            for r, row in enumerate(chunk):
                inp[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
            dev = next(self.model.parameters()).device
            with torch.inference_mode():
                logits = self.model(input_ids=inp.to(dev), attention_mask=mask.to(dev)).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, inp[:, 1:, None].to(dev))[..., 0]
            lp = (lp.double() * mask[:, 1:].to(dev)).sum(1)
            out[a : a + len(chunk)] = lp.cpu().numpy()
            self.passes += len(chunk)
        return out

    def plausibility(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log P_R(x | prefix) (n,) float64 natural log, target tokens of x it covers (n,) int)`` for every row of
        ``free`` ``(n, i)`` (module doc). One pass of R per row."""
        free = np.asarray(free, dtype=np.int64)
        n, i = free.shape
        if self.same_tokenizer:
            pos, _ = self.positions(free)
            return np.nansum(pos, axis=1), np.full(n, i - int(np.isnan(pos[0, 0])) if n else i)
        if self._prefix_lp is None:
            self._prefix_lp = float(self._text_logprob([self.template.prefix_text])[0]) if (
                self.template.prefix_text) else 0.0
        texts = [self.template.text(row) for row in free.tolist()]
        return self._text_logprob(texts) - self._prefix_lp, np.full(n, i)
