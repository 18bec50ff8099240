"""Where and in what precision a model runs: ``--device cpu|cuda|auto`` and ``--dtype float32|bfloat16|float16``.

Targets and helpers load through ``load_options``: the weights in the requested dtype, on the CPU, on one GPU, or
spread over every visible GPU with ``device_map="auto"`` (accelerate places layers; the model's ``.device`` is the
first one, where inputs go). Whatever the weights' dtype, log-softmax runs in float32 (``tasks.forward``).

The dtype is part of a truth's identity (bfloat16 truth is another distribution, ~1e-3 nats from float32, see
docs/truth.md); the device is recorded beside it but is not: the same weights on a CPU and a GPU differ only by float
rounding, which truth verification tolerates (``tasks.truth``).
"""

from __future__ import annotations

from typing import Any, Literal

from .target import TargetError

Device = Literal["cpu", "cuda", "auto"]
DType = Literal["float32", "bfloat16", "float16"]
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def resolve_device(device: str = "cpu") -> str:
    """``"cpu"`` or ``"cuda"`` for a requested device: ``"auto"`` is ``"cuda"`` when torch sees a GPU, else
    ``"cpu"``. Raises ``TargetError`` for an unknown name, or ``"cuda"`` on a machine where torch sees no GPU."""
    import torch

    if device not in DEVICES:
        raise TargetError(f"device {device!r} is not one of {', '.join(DEVICES)} (option --device)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TargetError("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False; a CPU build "
                          f"of torch {torch.__version__}?): use --device cpu or auto")
    return device


def torch_dtype(dtype: str = "float32") -> Any:
    """The ``torch.dtype`` named ``dtype``; raises ``TargetError`` for a name not in ``DTYPES``."""
    import torch

    if dtype not in DTYPES:
        raise TargetError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (option --dtype)")
    return getattr(torch, dtype)


def load_options(device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained``: ``dtype``, and for a GPU ``device_map="auto"``
    (one GPU, or the layers spread over all visible GPUs when the model is larger than one). Raises ``TargetError``
    as ``resolve_device`` and ``torch_dtype`` do."""
    options: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if resolve_device(device) == "cuda":
        options["device_map"] = "auto"
    return options


def placement(model: Any) -> dict[str, str]:
    """Where a loaded model runs, as recorded beside truth: ``{"device": "cpu" | "cuda:0" | "cuda:0,cuda:1",
    "dtype": "float32" | ...}`` (the devices of an accelerate device map, in order)."""
    devices = sorted({str(p.device) for p in model.parameters()})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"device": ",".join(devices), "dtype": dtype}
