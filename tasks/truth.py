"""The target's true next-token distributions at every prompt's cut point.

One forward pass per held-out document serves all prompts cut from it: a prompt's tokens are a prefix of its
document's tokens, so the hidden state at position ``len(bos) + cut - 1`` of the document's pass is the state for that
prompt. Documents are batched (sorted by length, right-padded) and the output layer runs only at cut positions.

Batch invariance: with right padding and a causal mask, real positions never attend to padding, and log-softmax runs
in float32 over the full vocabulary. ``tests/tasks/test_truth.py`` checks cached truth against one forward pass per
prompt. What remains is float rounding from different matrix shapes (~1e-6 in log-probability).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _final_logits(model: Any, hidden: Any) -> Any:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft capping happens after the output layer
        import torch

        logits = torch.tanh(logits / cap) * cap
    return logits


def compute_truth(
    model: Any,
    prompts: Sequence[Any],
    *,
    bos_ids: Sequence[int] = (),
    batch_size: int = 8,
    pad_id: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Log-probabilities (float32, shape ``(len(prompts), vocab)``) of the target's next token after each prompt.

    ``prompts`` need ``.doc``, ``.token_ids``; prompts of the same ``doc`` must be prefixes of one token sequence.
    ``on_progress(n)`` is called with the number of prompts finished after each batch.
    """
    import torch

    by_doc: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_doc[p.doc].append(i)
    groups = []
    for idx in by_doc.values():
        longest = max(idx, key=lambda i: len(prompts[i].token_ids))
        seq = list(bos_ids) + list(prompts[longest].token_ids)
        for i in idx:
            ids = list(prompts[i].token_ids)
            if list(prompts[longest].token_ids[: len(ids)]) != ids:
                raise ValueError(f"prompt {prompts[i].id} is not a prefix of its document's longest prompt")
        groups.append((seq, [(i, len(bos_ids) + len(prompts[i].token_ids) - 1) for i in idx]))
    groups.sort(key=lambda g: len(g[0]))

    vocab = model.get_output_embeddings().weight.shape[0]
    out = np.empty((len(prompts), vocab), dtype=np.float32)
    with torch.inference_mode():
        for b in range(0, len(groups), batch_size):
            batch = groups[b : b + batch_size]
            width = max(len(s) for s, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (seq, _) in enumerate(batch):
                input_ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
            rows = torch.tensor([r for r, (_, cuts) in enumerate(batch) for _ in cuts])
            cols = torch.tensor([pos for _, cuts in batch for _, pos in cuts])
            logp = torch.log_softmax(_final_logits(model, hidden[rows, cols]).float(), dim=-1)
            out[[i for _, cuts in batch for i, _ in cuts]] = logp.numpy()
            if on_progress:
                on_progress(sum(len(c) for _, c in batch))
    return out


def direct_truth(model: Any, token_ids: Sequence[int], *, bos_ids: Sequence[int] = ()) -> np.ndarray:
    """Reference: one unbatched forward pass of the full model on a single prompt (used by tests and benchmarks)."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([list(bos_ids) + list(token_ids)])).logits[0, -1]
        return torch.log_softmax(logits.float(), dim=-1).numpy()
