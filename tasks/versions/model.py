"""A version's model: its identity, loading it (precision, quantization) and its next-token log-probabilities.

Identity. A version runs a weights file in a precision, perhaps quantized. Its ``weights_sha256`` is the weights
file's own hash (``tasks.target``) when it runs them as stored in float32, and otherwise
``sha256("<file hash>:<dtype>:<quantize>")``: what it computes with, so two deployments of one file are two
versions, and the float32 reference of the default target has exactly the default target's identity (``id``, as
``tasks.target.TargetIdentity.id``: ``sha256(weights:tokenizer)[:16]``).

int8-dynamic (``torch.ao.quantization.quantize_dynamic``, every ``nn.Linear``, int8 weights per tensor, activations
quantized per tensor *at run time*): the activation scale is taken over the whole input, so a position's output
depends on the later tokens and on padding in the same pass (the harness's causality check refuses it: on SmolLM2
the log-probabilities after 20 tokens move by up to 8 nats when 10 more tokens follow). Its truth is therefore
computed one prompt at a time with exactly ``bos + prompt`` as input, as a deployed model reads a prompt; float32 and
bfloat16 versions use the batched truth of ``tasks.compute`` (padding excluded, batch-invariant).

Left out: other quantization schemes (GPTQ, AWQ, llama.cpp formats other than a GGUF file given as ``model``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import VersionsError, VersionSpec


@dataclass(frozen=True)
class VersionIdentity:
    """A version's identity (see the module doc). ``context``: positions one input may hold, not part of it."""

    name: str
    base_weights_sha256: str
    tokenizer_sha256: str
    dtype: str = "float32"
    quantize: str = "none"
    context: int | None = field(default=None, compare=False)

    @property
    def weights_sha256(self) -> str:
        if self.dtype == "float32" and self.quantize == "none":
            return self.base_weights_sha256
        return hashlib.sha256(f"{self.base_weights_sha256}:{self.dtype}:{self.quantize}".encode()).hexdigest()

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.weights_sha256}:{self.tokenizer_sha256}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, str]:
        """name, weights_sha256, tokenizer_sha256, id (as a target's identity) plus base weights, dtype, quantize."""
        return {"name": self.name, "weights_sha256": self.weights_sha256, "tokenizer_sha256": self.tokenizer_sha256,
                "id": self.id, "base_weights_sha256": self.base_weights_sha256, "dtype": self.dtype,
                "quantize": self.quantize}


def _model_spec(spec: VersionSpec) -> str | None:
    return None if spec.model == "default" else spec.model


def version_identity(spec: VersionSpec) -> tuple[VersionIdentity, Any]:
    """(identity, tokenizer) of a version without loading its weights. Raises ``VersionsError`` naming the version
    when its model file is missing or cannot be read as a causal LM's tokenizer."""
    from tasks.target import TargetError, load_tokenizer

    try:
        tok, ident = load_tokenizer(_model_spec(spec))
    except (TargetError, OSError, ValueError) as e:
        raise VersionsError(f"version {spec.name!r}: its model {spec.model!r} cannot be used: {e}") from e
    return VersionIdentity(spec.name, ident.weights_sha256, ident.tokenizer_sha256, spec.dtype, spec.quantize,
                           ident.context), tok


_LOADED: dict[tuple[str, str, str, str], Any] = {}


def load_version(spec: VersionSpec, *, device: str = "cpu") -> Any:
    """The version as a ``tasks.Target`` (model in eval mode, tokenizer, ``VersionIdentity``), loaded once per
    process. int8-dynamic quantizes the float32 model on the CPU (``device`` must be cpu). Raises ``VersionsError``
    naming the version when the model is missing, cannot be loaded, or cannot be quantized."""
    from tasks.target import Target, TargetError, load_target, resolve_target

    key = (spec.model, spec.dtype, spec.quantize, device)
    if key in _LOADED:
        t = _LOADED[key]
        ident = VersionIdentity(spec.name, t.identity.base_weights_sha256, t.identity.tokenizer_sha256, spec.dtype,
                                spec.quantize, t.identity.context)
        return Target(t.model, t.tokenizer, ident, t.path)
    ident, _ = version_identity(spec)
    if spec.quantize == "int8-dynamic" and device != "cpu":
        raise VersionsError(f"version {spec.name!r}: int8-dynamic quantization runs on the CPU only (--device cpu)")
    try:
        t = load_target(_model_spec(spec), device=device, dtype=spec.dtype)
    except (TargetError, OSError, ValueError) as e:
        bad = _non_finite_tensor(resolve_target(_model_spec(spec)))
        if bad:  # say what is wrong instead of what the causality probe saw of it
            raise VersionsError(f"version {spec.name!r}: weight {bad!r} of {spec.model!r} holds NaN or inf values: "
                                "its weights are broken (a rung that failed to train?)") from e
        raise VersionsError(f"version {spec.name!r}: could not load {spec.model!r}: {e}") from e
    model = t.model
    if spec.quantize == "int8-dynamic":
        import torch

        try:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8).eval()
        except (RuntimeError, ValueError) as e:
            raise VersionsError(f"version {spec.name!r}: int8 dynamic quantization failed: {e}") from e
    _LOADED[key] = Target(model, t.tokenizer, ident, resolve_target(_model_spec(spec)))
    return _LOADED[key]


def _non_finite_tensor(path: Any) -> str | None:
    """The name of the first tensor with NaN or inf values in a model folder's ``.safetensors`` files, else None
    (GGUF files and unreadable files: None)."""
    from pathlib import Path

    import torch
    from safetensors import safe_open

    folder = Path(path)
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    t = st.get_tensor(key)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return key
        except (OSError, ValueError, RuntimeError):
            return None
    return None


def version_logprobs(target: Any, prompts: Sequence[Any], *, bos_ids: Sequence[int] = (), batch_size: int = 8,
                     on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Log-probabilities (float32, natural log, ``(len(prompts), vocab)``) of the version's next token after each
    prompt (``.id``, ``.doc``, ``.token_ids``; input ``bos_ids + token_ids``). float32/bfloat16: batched
    (``tasks.compute.compute_truth``); int8-dynamic: one plain forward per prompt (see the module doc). Raises
    ``TargetError`` for a prompt longer than the model's context, ``VersionsError`` naming the version when its
    output has NaN or +inf."""
    from tasks.compute import compute_truth, direct_truth
    from tasks.forward import model_context
    from tasks.target import TargetError

    ident = target.identity
    if getattr(ident, "quantize", "none") == "none":
        out = compute_truth(target.model, prompts, bos_ids=bos_ids, batch_size=batch_size, on_progress=on_progress)
    else:
        limit = model_context(target.model.config)
        rows = []
        for p in prompts:
            if limit is not None and len(bos_ids) + len(p.token_ids) > limit:
                raise TargetError(f"prompt {p.id} needs {len(bos_ids) + len(p.token_ids)} positions, more than "
                                  f"version {ident.name!r}'s context of {limit}")
            rows.append(direct_truth(target.model, list(p.token_ids), bos_ids=list(bos_ids)))
            if on_progress:
                on_progress(1)
        out = np.stack(rows).astype(np.float32) if rows else np.empty((0, 0), np.float32)
    if out.size and not np.isfinite(np.nan_to_num(out, neginf=0.0)).all():
        row = int(np.flatnonzero(~np.isfinite(np.nan_to_num(out, neginf=0.0)).all(axis=1))[0])
        raise VersionsError(f"version {ident.name!r} gives NaN or +inf log-probabilities (prompt "
                            f"{prompts[row].id}): its weights are broken (a rung that failed to train?)")
    return out
