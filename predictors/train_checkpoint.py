"""Checkpoints of a helper's training: saved on a schedule, each a whole helper folder, and the state to resume from.

A checkpoint of the helper at ``<helper>/`` is ``<helper>/checkpoints/step-000500/``: a Hugging Face folder (weights,
config, the target's tokenizer) with the helper manifest (``logitpred-helper.json``, as for a finished helper, plus
``step``, ``valid_loss`` and ``checkpoint: true``), so it loads wherever a helper path is accepted (``-p model -O
path=...``, approval, versions), and ``trainer_state.pt``: optimizer moments, the window sampler's generator state, the
torch generator state and the loss curve so far, which is what ``--resume`` needs to continue exactly as an
uninterrupted run would (same thread count: torch's CPU kernels may split sums differently across thread counts).

Each checkpoint is written into a folder beside its place and renamed there whole (``tasks.io.replace_dir``), so a kill
leaves either the previous checkpoints only or the new one complete; ``latest_checkpoint`` reads only complete ones.
Left out: pruning old checkpoints (they are kept; a 5M-parameter one is about 20 MB, 60 MB with the optimizer state).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.io import aside_dir, atomic_write_json, fsync_tree, read_json, replace_dir

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.pt"


def checkpoint_dir(helper: Path, step: int) -> Path:
    """The folder of the checkpoint after ``step`` optimizer steps of the helper saved at ``helper``."""
    return Path(helper) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(helper: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of ``helper`` as (step, folder), by step; folders without a manifest or state are skipped."""
    from .train_helper import MANIFEST

    root = Path(helper) / CHECKPOINTS
    found = []
    for p in sorted(root.glob("step-*")) if root.is_dir() else []:
        if (p / MANIFEST).is_file() and (p / STATE).is_file() and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def latest_checkpoint(helper: Path) -> Path | None:
    """The complete checkpoint with the most steps, or None."""
    found = list_checkpoints(helper)
    return found[-1][1] if found else None


def save_checkpoint(helper: Path, step: int, model: Any, tokenizer: Any, manifest: dict[str, Any],
                    state: dict[str, Any], write_curve: Callable[[Path], None] | None = None) -> Path:
    """Write the checkpoint after ``step`` steps atomically; returns its folder.

    manifest: the helper manifest of this point (written as ``logitpred-helper.json``); state: what ``torch.save``
    keeps in ``trainer_state.pt`` (optimizer state dict, generator states, curve); write_curve(folder) may add the
    loss curve files.
    """
    import torch

    from .train_helper import MANIFEST

    dest = checkpoint_dir(helper, step)
    tmp = aside_dir(dest)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE)
    if write_curve:
        write_curve(tmp)
    atomic_write_json(tmp / MANIFEST, {**manifest, "step": step, "checkpoint": True})
    fsync_tree(tmp)
    replace_dir(tmp, dest)
    return dest


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(manifest, trainer state, model state dict) of a checkpoint folder. Raises ``ValueError`` if it is incomplete
    or not a helper checkpoint."""
    import torch
    from safetensors.torch import load_file

    from .train_helper import MANIFEST

    path = Path(path)
    if not (path / MANIFEST).is_file() or not (path / STATE).is_file():
        raise ValueError(f"{path} is not a complete training checkpoint (needs {MANIFEST} and {STATE})")
    manifest = read_json(path / MANIFEST)
    if not manifest.get("checkpoint"):
        raise ValueError(f"{path} is a helper but not a training checkpoint")
    state = torch.load(path / STATE, weights_only=False)  # our own file: numpy generator state is a plain dict
    weights = load_file(path / "model.safetensors")
    return manifest, state, weights
