"""Train a small helper language model on the corpora's train parts, with the target's tokenizer, on the CPU.

This is the seeds' "just train another similar model" case: a project-trained model is a helper like any other and
must be approved before it may predict in a gated evaluation. The model is a tiny Llama-architecture transformer
(``transformers.LlamaForCausalLM``, tied embeddings) trained with AdamW on random windows of the train token streams
(``tasks.tokens.train_tokens``: held-out documents, which prompts are cut from, never enter them). It is saved as a
Hugging Face folder with the target's tokenizer, a manifest (``logitpred-helper.json``: corpora, seed, sizes, steps,
final losses, thread count), the loss curve as CSV and PNG; on request also checkpoints every N steps, from which a
killed run resumes (``predictors.train_checkpoint``).

Speed (``bench/train.py``): windows are packed (no padding; each window's ``width`` tokens are all predicted), the loss
is the exact cross-entropy computed in row chunks so the vocabulary-wide logits stay in cache
(``predictors.train_loss``), AdamW is the fused CPU kernel, and the thread count is set per run: on a loaded 2-core
machine one thread is several times faster than two (OpenMP threads wait on each other at every small operation).

Reproducible on one machine: seeds fix the initialization and the window order, for a given thread count (torch CPU
kernels may still differ across versions and thread counts in the last bits). Left out: learning-rate schedules beyond
warmup + cosine, mixed precision, GPUs, torch.compile.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import aside_dir, atomic_write_json, fsync_tree, read_json, replace_dir

MANIFEST = "logitpred-helper.json"
FORMAT = "logitpred-helper/1"


@dataclass(frozen=True)
class TrainConfig:
    corpora: tuple[str, ...] = ("wiki", "news", "sotu")
    steps: int = 500
    batch_size: int = 8
    context: int = 96  # training window; prompts are truncated to this many tokens at prediction time
    hidden: int = 96
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0
    split_seed: int = 0  # the suites' document split (must match, so held-out documents stay out)
    heldout_fraction: float = 0.1
    eval_every: int = 50
    eval_batches: int = 8


def _streams(cfg: TrainConfig, tokenizer: Any, tokenizer_sha: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation token arrays: the train part of each corpus, its last 2% of documents for validation."""
    from tasks.tokens import train_tokens

    train, valid = [], []
    for corpus in cfg.corpora:
        s = train_tokens(corpus, tokenizer, tokenizer_sha, seed=cfg.split_seed, heldout_fraction=cfg.heldout_fraction)
        cut = int(s.offsets[int(len(s.doc_ids) * 0.98)])
        train.append(s.tokens[:cut])
        valid.append(s.tokens[cut:])
    return np.concatenate(train).astype(np.int64), np.concatenate(valid).astype(np.int64)


def _windows(tokens: np.ndarray, rng: np.random.Generator, batch: int, width: int) -> Any:
    import torch

    if tokens.size <= width + 1:
        raise ValueError(f"only {tokens.size} training tokens: fewer than one window of {width + 1}")
    starts = rng.integers(0, tokens.size - width - 1, size=batch)
    return torch.from_numpy(np.stack([tokens[s : s + width + 1] for s in starts]))


def build_model(cfg: TrainConfig, vocab: int, bos: int | None = None, eos: int | None = None) -> Any:
    """The helper's untrained ``LlamaForCausalLM`` (tied embeddings, MLP width 4 x hidden), initialized from
    ``torch.manual_seed(cfg.seed)``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.context, tie_word_embeddings=True,
                         bos_token_id=bos, eos_token_id=eos)
    return LlamaForCausalLM(config)


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW (weight decay 0.01, betas 0.9/0.95), the fused CPU kernel: one pass over each parameter per step."""
    import torch

    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95), fused=True)


def window_loss(model: Any, batch: Any) -> Any:
    """Mean next-token cross-entropy (nats) of ``model`` on windows ``batch`` (B, width + 1): inputs are the first
    ``width`` tokens, targets the last ``width`` (every token of a window is predicted once). Exact, in chunks
    (``predictors.train_loss``), so the (B x width x V) logits never exist at once."""
    from .train_loss import chunked_cross_entropy

    hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
    return chunked_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight,
                                 batch[:, 1:].reshape(-1))


def train_step(model: Any, opt: Any, batch: Any, lr: float) -> float:
    """One optimizer step on ``batch``: loss, backward, gradient clipping at norm 1, fused AdamW; returns the loss."""
    import torch

    for g in opt.param_groups:
        g["lr"] = lr
    loss = window_loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup over ``cfg.warmup`` steps, then cosine to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_helper(out_dir: Path, cfg: TrainConfig = TrainConfig(), *, target: str | None = None,
                 on_step: Callable[[int, float], None] | None = None, threads: int | None = None,
                 checkpoint_every: int = 0, resume: bool = False) -> dict[str, Any]:
    """Train and save a helper into ``out_dir``; returns its manifest.

    threads: ``torch.set_num_threads`` for the run (None: leave torch's setting); the result is reproducible for a
    given thread count. checkpoint_every: save a checkpoint every N steps under ``out_dir/checkpoints/``
    (``predictors.train_checkpoint``); 0 saves none. resume: continue from the latest complete checkpoint of
    ``out_dir`` (which must have been made with the same config), giving the weights an uninterrupted run gives.
    Raises ``ValueError`` on a bad config, a config that differs from the checkpoint's, or checkpoints of an earlier
    run left in ``out_dir`` when not resuming.
    """
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(Path(out_dir), cfg, target, on_step, checkpoint_every, resume)
    finally:
        torch.set_num_threads(before)  # the caller's setting, for what it runs next (e.g. an approval)


def _train(dest: Path, cfg: TrainConfig, target: str | None, on_step: Callable[[int, float], None] | None,
           checkpoint_every: int, resume: bool) -> dict[str, Any]:
    import torch

    from tasks.target import load_tokenizer

    from . import train_checkpoint as ckpt

    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.context < 2:
        raise ValueError(f"steps, batch_size must be >= 1 and context >= 2 (got {cfg.steps}, {cfg.batch_size}, "
                         f"{cfg.context})")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (got {checkpoint_every})")
    start = ckpt.latest_checkpoint(dest) if resume else None
    if resume and start is None:
        raise ValueError(f"nothing to resume: {dest} has no complete checkpoint (train without --resume)")
    if not resume and ckpt.list_checkpoints(dest):
        raise ValueError(f"{dest} holds checkpoints of an earlier run: continue it with --resume, or remove "
                         f"{dest / 'checkpoints'} to start afresh")
    tokenizer, ident = load_tokenizer(target)
    vocab = len(tokenizer)
    train, valid = _streams(cfg, tokenizer, ident.tokenizer_sha256)
    model = build_model(cfg, vocab, tokenizer.bos_token_id, tokenizer.eos_token_id)
    opt = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    vrng = np.random.default_rng(cfg.seed + 1)
    vbatches = [_windows(valid, vrng, cfg.batch_size, cfg.context) for _ in range(cfg.eval_batches)]

    def valid_loss() -> float:
        model.eval()
        with torch.inference_mode():
            losses = [float(window_loss(model, b)) for b in vbatches]
        model.train()
        return float(np.mean(losses))

    curve: list[dict[str, float]] = []
    first, elapsed = 0, 0.0
    if start is not None:
        ck_manifest, state, weights = ckpt.load_checkpoint(start)
        wanted = json.loads(json.dumps(asdict(cfg)))  # as the manifest holds it (tuples become lists)
        if ck_manifest.get("config") != wanted:
            raise ValueError(f"cannot resume from {start}: it was trained with config {ck_manifest.get('config')}, "
                             f"not {wanted}")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"checkpoint {start} does not fit the model: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["window_rng"]
        torch.set_rng_state(state["torch_rng"])
        curve, first, elapsed = list(state["curve"]), int(ck_manifest["step"]), float(state["seconds"])

    def manifest_now(seconds: float) -> dict[str, Any]:
        return {
            "format": FORMAT, "config": asdict(cfg), "parameters": int(sum(p.numel() for p in model.parameters())),
            "train_tokens": int(train.size), "valid_tokens": int(valid.size),
            "tokenizer_sha256": ident.tokenizer_sha256, "trained_with_target_tokenizer_of": ident.name,
            "seconds": round(seconds, 1), "final_train_loss": float(np.mean([r["train_loss"] for r in curve[-20:]])),
            "final_valid_loss": next((r["valid_loss"] for r in reversed(curve) if "valid_loss" in r), None),
            "context": cfg.context, "threads": torch.get_num_threads(),
        }

    t0 = time.time() - elapsed
    model.train()
    for step in range(first, cfg.steps):
        batch = _windows(train, rng, cfg.batch_size, cfg.context)
        loss = train_step(model, opt, batch, lr_at(cfg, step))
        row = {"step": step + 1, "train_loss": loss, "lr": lr_at(cfg, step), "seconds": time.time() - t0}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["valid_loss"] = valid_loss()
        curve.append(row)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
            vl = row["valid_loss"] if "valid_loss" in row else valid_loss()
            state = {"optimizer": opt.state_dict(), "window_rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "curve": list(curve), "seconds": time.time() - t0}
            ckpt.save_checkpoint(dest, step + 1, model, tokenizer, {**manifest_now(time.time() - t0), "valid_loss": vl},
                            state, lambda d: _write_curve(d, curve, vocab))
        if on_step:
            on_step(step + 1, row["train_loss"])
    model.eval()
    # Saved into a fresh folder beside the destination and swapped in whole (tasks.io.replace_dir): retraining a helper
    # never leaves new weights under an old manifest, and a kill leaves the previous helper as it was. This run's
    # checkpoints move into the new folder just before the swap.
    out_dir = aside_dir(dest)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_curve(out_dir, curve, vocab)
    manifest = manifest_now(time.time() - t0)
    atomic_write_json(out_dir / MANIFEST, manifest)
    fsync_tree(out_dir)  # save_pretrained and savefig do not fsync
    if (dest / ckpt.CHECKPOINTS).is_dir():
        (dest / ckpt.CHECKPOINTS).rename(out_dir / ckpt.CHECKPOINTS)
    replace_dir(out_dir, dest)
    return manifest


def _write_curve(out_dir: Path, curve: Sequence[dict[str, float]], vocab: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curve)
    df.to_csv(out_dir / "training_curve.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(df["step"], df["train_loss"], lw=0.8, alpha=0.6, label="train (batch)")
    ax.plot(df["step"], df["train_loss"].rolling(20, min_periods=1).mean(), lw=1.5, label="train (20-step mean)")
    v = df.dropna(subset=["valid_loss"]) if "valid_loss" in df else df.iloc[:0]
    if len(v):
        ax.plot(v["step"], v["valid_loss"], "o-", ms=3, label="validation")
    ax.axhline(math.log(vocab), color="grey", ls=":", lw=0.8,
               label="uniform (log V)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("helper training curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "training_curve.png")
    plt.close(fig)


def helper_context(path: Path) -> int | None:
    """The context a project-trained helper was trained on (prompts are truncated to it), if it has a manifest."""
    m = Path(path) / MANIFEST if Path(path).is_dir() else None
    if m is None or not m.is_file():
        return None
    return int(read_json(m).get("context") or 0) or None
