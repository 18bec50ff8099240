"""Exact next-token log-probabilities from a causal LM's own forward pass, computed only at the positions asked for.

Truth (``tasks.truth``) and helper predictions (``predictors.model``) both come from here. The model's own ``forward``
produces the logits, so whatever an architecture does after its last hidden state (Gemma's final soft-capping,
Granite's ``logits_scaling``, Cohere's ``logit_scale``, tied or untied output layers) is included; nothing is
re-implemented by hand. transformers causal LMs take ``logits_to_keep``: the output layer then runs only at the kept
positions, so a batch never materializes ``(batch, sequence, vocab)`` logits, only ``(batch, kept, vocab)``.

Two ways to ask for positions, chosen once per model by a probe (``check_causal_lm``):

- ``rows`` (one call per batch): right-padded rows with a 2-D integer ``logits_to_keep`` of shape ``(batch, kept)``,
  each row its own positions (transformers' ``slice_logits_to_keep``; nearly every causal LM in transformers 5).
- ``each`` (one call per row): unpadded, with a 1-D ``logits_to_keep`` of that row's positions, for models that take
  only the 1-D form.

The probe runs the model on two short sequences and checks, against plain full-sequence forwards, that the kept
positions give the same log-probabilities (padding included) and that the output at a position does not depend on
later tokens (causality: a bidirectional encoder would silently see the future). A model that fails, whose
``forward`` does not take ``logits_to_keep``, or that is an encoder-decoder, raises ``TargetError`` naming its class
and what is required: never silent wrong numbers.

Speed (``bench/truth.py``): on the CPU, float32 ``F.linear`` inside these passes runs on oneDNN
(``torch.ops.mkldnn._linear_pointwise``, the oneDNN linear kernel of torch's inductor) rather than torch's default MKL
sgemm, which takes its AVX2 path on AMD CPUs: ~2.2x the matmul throughput on an AVX-512 AMD EPYC (truth 1.8x faster).
Still float32 arithmetic (not bf16 or tf32: 1.0e-6 rms error against float64 on a 512x1536x576 product, MKL's 5e-7),
in another summation order: on 200 wiki prompts of SmolLM2, batched truth differs from a plain per-prompt forward (MKL)
by at most 1.07e-4 in log-probability (6.9e-5 with MKL; the largest at tokens of log-probability ~-23; KL <= 6e-7
nats), and from itself at batch size 1 by 9.0e-5. ``ONEDNN_LINEAR = False`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from .target import TargetError

# Config attributes that give a model's context (positions it was built for), in order of preference.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length", "max_seq_len")
_MODES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_PROBE_ERRORS = (TypeError, ValueError, IndexError, RuntimeError)
ONEDNN_LINEAR = True  # float32 CPU linear layers through oneDNN during truth passes (see the module doc)


def model_context(config: Any) -> int | None:
    """The most positions (tokens, BOS included) one input of a model with this transformers config may hold: its
    ``max_position_embeddings`` (GPT-2: ``n_positions``; other names in ``CONTEXT_KEYS``), read from the text config
    of a composite model. None when the config names none (then no limit can be checked)."""
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def output_vocab(model: Any) -> int:
    """Rows of the model's output layer (its logits' last dimension), or ``config.vocab_size`` without one."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config")
               else model.config.vocab_size)


def _kwargs(model: Any) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def _logits(model: Any, out: Any) -> Any:
    logits = getattr(out, "logits", None)
    if logits is None:
        raise TargetError(f"{type(model).__name__}'s forward returned no logits: the harness needs a causal LM "
                          "(AutoModelForCausalLM) whose output has .logits")
    return logits


@functools.cache
def _onednn_mode() -> Any:
    """The class of a torch function mode that sends float32 CPU ``F.linear`` calls on plain tensors to oneDNN, or None
    when this torch has no oneDNN linear kernel."""
    import torch
    from torch.overrides import TorchFunctionMode

    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    linear, kernel, plain = torch.nn.functional.linear, torch.ops.mkldnn._linear_pointwise, (torch.Tensor,
                                                                                            torch.nn.Parameter)

    class OneDNNLinear(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            if func is linear and not kwargs and len(args) in (2, 3):
                x, w, b = (*args, None)[:3]
                if (type(x) in plain and type(w) in plain and (b is None or type(b) in plain)
                        and x.dtype == w.dtype == torch.float32 and x.device.type == w.device.type == "cpu"
                        and w.dim() == 2 and (b is None or b.dtype == torch.float32)):
                    return kernel(x, w, b, "none", [], "")
            return func(*args, **(kwargs or {}))

    return OneDNNLinear


def _fast_linear() -> Any:
    """Context of one forward pass: float32 CPU linear layers on oneDNN while ``ONEDNN_LINEAR`` is on and torch's
    oneDNN is available and enabled (``torch.backends.mkldnn.enabled``); otherwise nothing changes."""
    import torch

    mode = _onednn_mode() if ONEDNN_LINEAR and torch.backends.mkldnn.enabled else None
    return mode() if mode is not None else contextlib.nullcontext()


def _run(model: Any, mode: str, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
         pad_id: int) -> Any:
    """Float32 log-probabilities, shape ``(sum(len(p) for p in positions), vocab)``, row by row in order."""
    import torch

    extra, device = _kwargs(model), getattr(model, "device", None)
    if mode == "each":
        parts = []
        for seq, pos in zip(seqs, positions, strict=True):
            keep = torch.tensor(list(pos), dtype=torch.long, device=device)
            with _fast_linear():
                out = model(input_ids=torch.tensor([list(seq)], device=device), logits_to_keep=keep, **extra)
            logits = _logits(model, out)
            if logits.ndim != 3 or logits.shape[:2] != (1, len(pos)):
                raise TargetError(f"{type(model).__name__} gave logits of shape {tuple(logits.shape)} for 1 row and "
                                  f"{len(pos)} kept positions, not (1, {len(pos)}, vocab)")
            parts.append(torch.log_softmax(logits[0].float(), dim=-1).cpu())
        return torch.cat(parts)
    width, kept = max(len(s) for s in seqs), max(len(p) for p in positions)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    keep = torch.empty((len(seqs), kept), dtype=torch.long)
    for r, (seq, pos) in enumerate(zip(seqs, positions, strict=True)):
        input_ids[r, : len(seq)] = torch.tensor(list(seq))
        mask[r, : len(seq)] = 1
        keep[r] = torch.tensor(list(pos) + [pos[-1]] * (kept - len(pos)))  # short rows repeat their last position
    with _fast_linear():
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device),
                    **extra)
    logits = _logits(model, out)
    if logits.ndim != 3 or logits.shape[:2] != (len(seqs), kept):
        raise TargetError(f"{type(model).__name__} gave logits of shape {tuple(logits.shape)} for {len(seqs)} rows "
                          f"and {kept} kept positions, not ({len(seqs)}, {kept}, vocab)")
    take = torch.tensor([r * kept + j for r, pos in enumerate(positions) for j in range(len(pos))],
                        device=logits.device)
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1])[take].float(), dim=-1).cpu()


def _full(model: Any, seq: Sequence[int]) -> Any:
    """Reference: plain forward of one unpadded sequence, log-softmax (float32) at every position."""
    import torch

    ids = torch.tensor([list(seq)], device=getattr(model, "device", None))
    return torch.log_softmax(_logits(model, model(ids, **_kwargs(model)))[0].float(), dim=-1).cpu()


def check_causal_lm(model: Any) -> str:
    """Check that ``model`` can give exact next-token distributions here; return how positions are asked for
    (``"rows"`` or ``"each"``, see the module doc). Probed once per model object (4-6 forwards of <= 7 tokens).

    Raises ``TargetError`` naming the model class when it is an encoder-decoder, its ``forward`` does not accept
    ``logits_to_keep``, its output at a position depends on later tokens (not causal), or neither way of keeping
    positions reproduces its plain full-sequence log-probabilities (within 1e-3 in float32, 5e-2 in lower precision).
    """
    import torch

    if model in _MODES:
        return _MODES[model]
    name = type(model).__name__
    need = ("the harness needs a decoder-only causal LM (AutoModelForCausalLM) whose forward accepts logits_to_keep "
            "(an int or a tensor of positions, as transformers causal LMs do)")
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        what = "an encoder-decoder model" if config is not None else "not a transformers model"
        raise TargetError(f"{name} is {what}: {need}")
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        raise TargetError(f"{name}.forward does not accept logits_to_keep: {need}")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    has_weight = emb is not None and getattr(emb, "weight", None) is not None
    n_in = int(emb.weight.shape[0]) if has_weight else output_vocab(model)
    a = [(17 + 7919 * k) % n_in for k in range(7)]
    b = [(29 + 104729 * k) % n_in for k in range(4)]
    dtype = next(model.parameters()).dtype
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
    with torch.inference_mode():
        try:
            ref_a, ref_a4, ref_b = _full(model, a), _full(model, a[:4]), _full(model, b)
        except _PROBE_ERRORS as e:
            raise TargetError(f"{name} failed a plain forward pass on 7 tokens ({type(e).__name__}: {e}): "
                              f"{need}") from e
        gap = float((ref_a[3] - ref_a4[3]).abs().max())
        if not gap <= tol:
            raise TargetError(f"{name} is not causal: its log-probabilities after 4 tokens change by {gap:.3g} when "
                              f"3 more tokens follow (a bidirectional encoder, or a decoder without is_decoder=True): "
                              f"{need}")
        want = torch.stack([ref_a[3], ref_a[6], ref_b[3]])
        tried = []
        for mode in ("rows", "each"):
            try:
                got = _run(model, mode, [a, b], [[3, 6], [3]], pad_id=0)
            except (TargetError, *_PROBE_ERRORS) as e:
                tried.append(f"{mode}: {type(e).__name__}: {e}")
                continue
            diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
            if diff <= tol:
                _MODES[model] = mode
                return mode
            tried.append(f"{mode}: kept positions differ from a plain forward by {diff:.3g}")
    raise TargetError(f"{name}'s forward with logits_to_keep does not reproduce its own full-sequence "
                      f"log-probabilities ({'; '.join(tried)}): {need}")


def logprobs_at(model: Any, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], *,
                pad_id: int = 0) -> np.ndarray:
    """Log-probabilities (float32, natural log, shape ``(sum(len(p) for p in positions), vocab)``) of the next token at
    ``positions[r]`` (0-based, each ``< len(seqs[r])``, at least one per row) of each sequence ``seqs[r]``, rows in
    order, from the model's own forward (one call for the batch, or one per row; see ``check_causal_lm``).

    Runs under ``torch.inference_mode``. Raises ``TargetError`` if the model is unsupported (``check_causal_lm``) or
    a sequence is longer than its context (``model_context``), ``ValueError`` for positions outside their sequence.
    """
    import torch

    mode = check_causal_lm(model)
    limit = model_context(model.config)
    for seq, pos in zip(seqs, positions, strict=True):
        if limit is not None and len(seq) > limit:
            raise TargetError(f"an input of {len(seq)} tokens is longer than {type(model).__name__}'s context of "
                              f"{limit} positions")
        if not pos or min(pos) < 0 or max(pos) >= len(seq):
            raise ValueError(f"positions {list(pos)} are not inside a sequence of {len(seq)} tokens")
    with torch.inference_mode():
        return _run(model, mode, seqs, positions, pad_id).numpy()
