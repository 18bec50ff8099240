"""P(B | x) from the target: the probability that its continuation of input ``x`` starts with a member of behaviour B.

A behaviour is a *prefix-free* set of target token sequences ``b_1 .. b_J`` (``tasks.rare.behaviours`` removes a member
that another member is a prefix of: its event is contained in the shorter one's). The events "the continuation starts
with b_j" are then disjoint, so at temperature 1

    P(B | x) = sum_j P(b_j | x),   log P(b_j | x) = sum_t log p(b_j,t | bos, x, b_j,<t)   (the chain rule)

and at temperature 0 (greedy decoding) the event is an indicator: the greedy continuation starts with b_j iff every
``b_j,t`` is the argmax after ``x + b_j,<t`` (at most one member can match, the set being prefix-free). Both come
from one teacher-forced pass over ``bos + x + b_j[:-1]`` per member, members batched, log-softmax in float32.

``BehaviourScorer`` evaluates batches of inputs (rows of target token ids of equal length, after ``bos``): ``log_prob``
(no gradient; a shared prefix's KV cache is computed once and reused for every batch, so an input costs only its own
positions plus the member's, as exact enumeration needs), ``greedy`` (indicators), and ``log_prob_and_grad`` (and
``log_prob_grad_greedy``, the greedy indicator from the same forward): the
gradient of ``log P(B | x)`` with respect to the one-hot encoding of each *free* position, ``(n, k, V)``, as importance
samplers (ITGIS, MHIS) use it. The gradient is taken at the input embeddings and pulled back through the embedding
module's own output for every vocabulary entry (``grad_onehot = grad_embed @ E^T`` with ``E = embed(arange(V))``), which
is exact for any embedding that is a (scaled) table lookup, Gemma's sqrt(d) scaling included.

Cost accounting (``passes``): one forward of one input, all members of B batched with it, is one pass; one backward
is one more. Estimators are given budgets in these units (Wu & Hilton count model calls the same way).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Passes:
    """Target passes spent: ``forward`` inputs evaluated, ``backward`` gradients taken (``total`` is their sum)."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


class PrefixRunner:
    """Forward passes of rows that all follow one fixed ``head`` (BOS + prefix): the head's KV cache is computed once
    and repeated for every batch, so a row costs only its own positions. Without a head, rows run alone."""

    def __init__(self, model: Any, head: Sequence[int]) -> None:
        self.model, self.head = model, list(head)
        self._cache: Any = None

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def logits(self, rows: Any, keep: int) -> Any:
        """Logits ``(b, keep, V)`` at the last ``keep`` positions of ``rows`` ``(b, w)`` (long tensor, no padding)
        after the head. Raises ``ValueError`` when the model returns no KV cache."""
        import torch

        from ..continuations import _cache_kw, _out_cache

        rows = rows.to(self.device)
        with torch.inference_mode():
            if not self.head:
                return self.model(input_ids=rows, logits_to_keep=keep).logits
            if self._cache is None:
                out = self.model(input_ids=torch.tensor([self.head], device=self.device), use_cache=True,
                                 logits_to_keep=1)
                self._cache = _out_cache(out)
                if _cache_kw(self.model) is None or self._cache is None:
                    raise ValueError(f"{type(self.model).__name__} returns no KV cache: prefix reuse impossible")
            rep = copy.deepcopy(self._cache)
            rep.batch_repeat_interleave(rows.shape[0])
            mask = torch.ones((rows.shape[0], len(self.head) + rows.shape[1]), dtype=torch.long, device=self.device)
            return self.model(input_ids=rows, attention_mask=mask, use_cache=True, logits_to_keep=keep,
                              **{_cache_kw(self.model): rep}).logits


class BehaviourScorer:
    """Scores inputs ``prefix + free`` (``free``: ``(n, k)`` token ids) against one behaviour (module doc).

    ``model``: a causal LM (``tasks.Target.model``), ``bos_ids``: what the model sees first, ``prefix``: fixed target
    token ids shared by every input (may be empty), ``members``: the behaviour's prefix-free token sequences.
    ``batch_size``: inputs per forward pass. Raises ``ValueError`` for an empty behaviour or a member that is empty."""

    def __init__(self, model: Any, *, bos_ids: Sequence[int], prefix: Sequence[int], members: Sequence[Sequence[int]],
                 batch_size: int = 32) -> None:
        if not members or any(len(m) == 0 for m in members):
            raise ValueError("a behaviour needs at least one non-empty token sequence")
        self.model, self.bos, self.prefix = model, list(bos_ids), list(prefix)
        self.members = [list(map(int, m)) for m in members]
        self.batch_size = batch_size
        self.passes = Passes()
        self.runner = PrefixRunner(model, self.bos + self.prefix)

    # --- helpers ----------------------------------------------------------------------------------------------------
    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def _member_batch(self, n: int) -> tuple[Any, Any, Any]:
        """For n inputs: member continuation ids right-padded ``(n*J, w)`` (the tokens fed after x: ``b[:-1]``), the
        targets ``(n*J, m_max)`` and their mask; rows are input-major (input i, member j at row i*J + j)."""
        import torch

        J, w = len(self.members), max(len(m) for m in self.members)
        fed = torch.zeros((J, max(w - 1, 0)), dtype=torch.long)
        tgt = torch.zeros((J, w), dtype=torch.long)
        mask = torch.zeros((J, w), dtype=torch.bool)
        for j, m in enumerate(self.members):
            fed[j, : len(m) - 1] = torch.tensor(m[:-1], dtype=torch.long)
            tgt[j, : len(m)] = torch.tensor(m, dtype=torch.long)
            mask[j, : len(m)] = True
        return fed.repeat(n, 1), tgt.repeat(n, 1), mask.repeat(n, 1)

    def _reduce(self, logits: Any, n: int) -> tuple[Any, Any]:
        """``logits`` ``(n*J, w, V)`` at the member positions -> (log P(B | x) ``(n,)`` float64, greedy indicator
        ``(n,)`` bool), one log-softmax for both (the argmax is the logits')."""
        import torch

        _, tgt, mask = self._member_batch(n)
        tgt, mask = tgt.to(logits.device), mask.to(logits.device)
        hit = ((logits.argmax(dim=-1) == tgt) | ~mask).all(dim=1).view(n, -1).any(dim=1)
        lp = torch.log_softmax(logits.float(), dim=-1)
        step = lp.gather(-1, tgt[..., None])[..., 0].masked_fill(~mask, 0.0)
        per_member = step.double().sum(dim=1).view(n, -1)  # (n, J)
        return torch.logsumexp(per_member, dim=1), hit

    def evaluate(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log P(B | prefix + x) (n,) float64, greedy indicator (n,) bool)`` for every row ``x`` of ``free``
        ``(n, k)``, both from the same forward pass (one pass per input)."""
        import torch

        free = np.asarray(free, dtype=np.int64)
        n, k = free.shape
        lps, hits = [], []
        J = len(self.members)
        for a in range(0, n, self.batch_size):
            x = torch.as_tensor(free[a : a + self.batch_size])
            b = len(x)
            fed, _, _ = self._member_batch(b)
            rows = torch.cat([x.repeat_interleave(J, dim=0), fed], dim=1)  # (b*J, k + w - 1)
            logits = self.runner.logits(rows, keep=rows.shape[1] - k + 1)  # from the last free position on
            lp, hit = self._reduce(logits, b)
            lps.append(lp.cpu().numpy())
            hits.append(hit.cpu().numpy())
            self.passes.forward += b
        if not lps:
            return np.zeros(0), np.zeros(0, dtype=bool)
        return np.concatenate(lps), np.concatenate(hits)

    def log_prob(self, free: np.ndarray) -> np.ndarray:
        """``log P(B | prefix + x)`` at temperature 1 for every row ``x`` of ``free`` ``(n, k)``: ``(n,)`` float64
        natural log."""
        return self.evaluate(free)[0]

    def greedy(self, free: np.ndarray) -> np.ndarray:
        """Whether greedy decoding after ``prefix + x`` starts with a member of B, per row: ``(n,)`` bool."""
        return self.evaluate(free)[1]

    def log_prob_and_grad(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log P(B | x) (n,), d log P(B | x) / d onehot(x) (n, k, V))`` at temperature 1 (module doc). Costs a
        forward and a backward pass per input (no prefix cache: the whole sequence is differentiated)."""
        lp, grad, _ = self.log_prob_grad_greedy(free)
        return lp, grad

    def log_prob_grad_greedy(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``log_prob_and_grad`` plus the greedy indicator ``(n,)`` bool read from the same forward pass (the
        temperature-0 event costs nothing more than the gradient: a forward and a backward pass per input)."""
        import torch

        free = np.asarray(free, dtype=np.int64)
        n, k = free.shape
        emb = self.model.get_input_embeddings()
        with torch.no_grad():
            table = emb(torch.arange(emb.weight.shape[0], device=self.device)).float()  # (V, d), scaling included
        vals, grads, hits = [], [], []
        head = torch.tensor(self.bos + self.prefix, dtype=torch.long)
        for a in range(0, n, self.batch_size):
            x = torch.as_tensor(free[a : a + self.batch_size])
            b = len(x)
            J = len(self.members)
            fed, _, _ = self._member_batch(b)
            with torch.enable_grad():
                e_free = emb(x.to(self.device)).detach().requires_grad_(True)  # (b, k, d)
                e_head = emb(head.to(self.device))[None].expand(b, -1, -1)
                e_in = torch.cat([e_head, e_free], dim=1).repeat_interleave(J, dim=0)
                e_fed = emb(fed.to(self.device))
                seq = torch.cat([e_in, e_fed], dim=1)
                keep = fed.shape[1] + 1
                res = self.model(inputs_embeds=seq, logits_to_keep=keep)
                lp, hit = self._reduce(res.logits, b)
                lp.sum().backward()
            g = e_free.grad.float() @ table.T  # (b, k, V)
            vals.append(lp.detach().cpu().numpy())
            grads.append(g.cpu().numpy())
            hits.append(hit.cpu().numpy())
            self.passes.forward += b
            self.passes.backward += b
        return np.concatenate(vals), np.concatenate(grads), np.concatenate(hits)
