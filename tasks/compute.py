"""The target's true next-token distributions, computed: one forward pass per prompt group, batched.

One forward pass per prompt group serves all its cuts: prompts of one ``doc`` key are prefixes of one token sequence,
so position ``len(bos) + cut - 1`` of the group's pass gives that prompt's distribution. (Suites give each prompt a
``doc`` key of its own window, so a group is usually one prompt.) Groups are batched (sorted by length, right-padded)
and run through the model's *own* forward with ``logits_to_keep`` set to the cut positions (``tasks.forward``): the
architecture's own output processing (soft-capping, logit scaling, tied or untied heads) is included, and the output
layer runs only at cut positions. Prompts longer than the model's context (BOS included) are refused.

Batch invariance: with right padding and a causal mask, real positions never attend to padding, and log-softmax runs
in float32 over the full vocabulary. ``tests/tasks/test_truth.py`` checks batched truth against one forward pass per
prompt. What remains is float rounding from different matrix shapes (~1e-6 in log-probability).

The batches are planned apart from the model (``plan_batches``, pure) and run one by one (``batch_logprobs``), so a
sharded computation (``tasks.shards``: resumable, in this process or on Ray workers) runs exactly the passes
``compute_truth`` runs, with the same shapes and so the same rounding.

How truth is stored and committed is ``tasks.truth``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One forward pass of truth: ``seqs[r]`` is row ``r``'s model input (BOS included, token ids), right-padded in
    the pass; ``positions[r]`` are its kept positions (0-based, one per prompt of its group); ``rows`` is the prompt
    index (row of the truth array) of each kept position, in order (``len(rows) == sum(len(p) for p in positions)``).
    Plain tuples of ints: picklable, hashable, and what a shard key is computed from (``tasks.shards``)."""

    seqs: tuple[tuple[int, ...], ...]
    positions: tuple[tuple[int, ...], ...]
    rows: tuple[int, ...]

    @property
    def cost(self) -> int:
        """Padded tokens of the pass (rows x longest row): a measure of its compute, for scheduling."""
        return len(self.seqs) * max(len(s) for s in self.seqs)


def plan_batches(prompts: Sequence[Any], *, bos_ids: Sequence[int] = (), batch_size: int = 8,
                 limit: int | None = None, model_name: str = "the model") -> list[Batch]:
    """The forward passes ``compute_truth`` runs for ``prompts``, in order, without a model: prompts grouped by
    ``doc`` (one pass per group, at its longest prompt), groups sorted by length (stable) and cut into batches of
    ``batch_size`` groups. Pure: the same prompts, BOS and batch size always give the same batches, hence the same
    matrix shapes and float rounding, whoever runs them (``tasks.shards``: the local and the Ray path).

    ``limit`` is the model's context (positions, BOS included; ``tasks.forward.model_context``), None for no check;
    ``model_name`` names the model in that error. Raises ``ValueError`` for ``batch_size < 1``, a prompt that is not a
    prefix of its document's longest prompt or already starts with ``bos_ids``; ``TargetError`` for a prompt plus BOS
    longer than ``limit``.
    """
    from .target import TargetError

    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be at least 1")
    bos = [int(t) for t in bos_ids]
    by_doc: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_doc[p.doc].append(i)
        if bos and list(p.token_ids[: len(bos)]) == bos:
            raise ValueError(f"prompt {p.id} already starts with the BOS ids {bos}: token ids must be the text's "
                             "encoding without special tokens (the model would see two BOS)")
        if limit is not None and len(bos) + len(p.token_ids) > limit:
            raise TargetError(f"prompt {p.id} needs {len(bos) + len(p.token_ids)} positions ({len(bos)} BOS + "
                              f"{len(p.token_ids)} tokens), more than {model_name}'s context of {limit}: "
                              "rebuild the suite for this target (suites cut only inside the target's context)")
    groups = []
    for idx in by_doc.values():
        longest = max(idx, key=lambda i: len(prompts[i].token_ids))
        seq = tuple(bos + [int(t) for t in prompts[longest].token_ids])
        for i in idx:
            ids = list(prompts[i].token_ids)
            if list(prompts[longest].token_ids[: len(ids)]) != ids:
                raise ValueError(f"prompt {prompts[i].id} is not a prefix of its document's longest prompt")
        groups.append((seq, [(i, len(bos) + len(prompts[i].token_ids) - 1) for i in idx]))
    groups.sort(key=lambda g: len(g[0]))
    return [Batch(tuple(s for s, _ in batch), tuple(tuple(pos for _, pos in cuts) for _, cuts in batch),
                  tuple(i for _, cuts in batch for i, _ in cuts))
            for batch in (groups[b : b + batch_size] for b in range(0, len(groups), batch_size))]


def batch_logprobs(model: Any, batch: Batch, *, pad_id: int = 0) -> np.ndarray:
    """Log-probabilities (float32, natural log, shape ``(len(batch.rows), vocab)``) of one planned pass, rows in
    ``batch.rows`` order (``tasks.forward.logprobs_at``). Raises ``TargetError`` as ``logprobs_at`` does, or when the
    model gives another number of logits per position than its output layer has rows."""
    from .forward import logprobs_at, output_vocab
    from .target import TargetError

    logp, vocab = logprobs_at(model, batch.seqs, batch.positions, pad_id=pad_id), output_vocab(model)
    if logp.shape[1] != vocab:
        raise TargetError(f"{type(model).__name__} gave {logp.shape[1]} logits per position, but its output "
                          f"layer has {vocab} rows")
    return logp


def compute_truth(
    model: Any,
    prompts: Sequence[Any],
    *,
    bos_ids: Sequence[int] = (),
    batch_size: int = 8,
    pad_id: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Log-probabilities (float32, natural log, shape ``(len(prompts), vocab)``) of the target's next token after each
    prompt, from the model's own forward pass (``tasks.forward.logprobs_at``: logits only at the cut positions), one
    pass per batch of ``plan_batches``.

    ``prompts`` need ``.id``, ``.doc``, ``.token_ids``; prompts of the same ``doc`` must be prefixes of one token
    sequence. The model sees ``bos_ids + token_ids`` (exactly one BOS). ``on_progress(n)`` is called with the number
    of prompts finished after each batch. Raises ``ValueError`` when a prompt is not a prefix of its document's longest
    prompt, or already starts with ``bos_ids`` (the model would see two); ``TargetError`` when the model is unsupported
    (``tasks.forward.check_causal_lm``) or a prompt plus BOS is longer than the model's context.
    """
    from .forward import check_causal_lm, model_context, output_vocab

    check_causal_lm(model)
    batches = plan_batches(prompts, bos_ids=bos_ids, batch_size=batch_size, limit=model_context(model.config),
                           model_name=type(model).__name__)
    out = np.empty((len(prompts), output_vocab(model)), dtype=np.float32)
    for batch in batches:
        out[list(batch.rows)] = batch_logprobs(model, batch, pad_id=pad_id)
        if on_progress:
            on_progress(len(batch.rows))
    return out


def direct_truth(model: Any, token_ids: Sequence[int], *, bos_ids: Sequence[int] = ()) -> np.ndarray:
    """Reference (tests, benchmarks): log-softmax (float32, shape ``(vocab,)``) of ``model(bos_ids + token_ids)
    .logits[0, -1]``, one unbatched plain forward pass on a single prompt, full logits for every position."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor([list(bos_ids) + list(token_ids)], device=getattr(model, "device", None))
        logits = model(ids).logits[0, -1]
        return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
