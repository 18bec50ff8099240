"""Train a small helper language model on the corpora's train parts, with the target's tokenizer, on the CPU.

This is the seeds' "just train another similar model" case: a project-trained model is a helper like any other and
must be approved before it may predict in a gated evaluation. The model is a tiny Llama-architecture transformer
(``transformers.LlamaForCausalLM``, tied embeddings) trained with AdamW on random windows of the train token streams
(``tasks.tokens.train_tokens``: held-out documents, which prompts are cut from, never enter them). It is saved as a
Hugging Face folder with the target's tokenizer, a manifest (``logitpred-helper.json``: corpora, seed, sizes, steps,
final losses), the loss curve as CSV and PNG.

Reproducible on one machine: seeds fix the initialization and the window order (torch CPU kernels may still differ
across versions in the last bits). Left out: learning-rate schedules beyond warmup + cosine, mixed precision, GPUs.
"""

from __future__ import annotations

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


def train_helper(out_dir: Path, cfg: TrainConfig = TrainConfig(), *, target: str | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train and save a helper into ``out_dir``; returns its manifest."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.target import load_tokenizer

    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.context < 2:
        raise ValueError(f"steps, batch_size must be >= 1 and context >= 2 (got {cfg.steps}, {cfg.batch_size}, "
                         f"{cfg.context})")
    tokenizer, ident = load_tokenizer(target)
    vocab = len(tokenizer)
    train, valid = _streams(cfg, tokenizer, ident.tokenizer_sha256)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.context, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    vrng = np.random.default_rng(cfg.seed + 1)
    vbatches = [_windows(valid, vrng, cfg.batch_size, cfg.context) for _ in range(cfg.eval_batches)]

    def valid_loss() -> float:
        model.eval()
        with torch.inference_mode():
            losses = [float(model(input_ids=b[:, :-1], labels=b[:, :-1]).loss) for b in vbatches]
        model.train()
        return float(np.mean(losses))

    curve: list[dict[str, float]] = []
    t0 = time.time()
    model.train()
    for step in range(cfg.steps):
        batch = _windows(train, rng, cfg.batch_size, cfg.context)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss  # labels are shifted inside the model
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        row = {"step": step + 1, "train_loss": loss.item(), "lr": lr_at(step), "seconds": time.time() - t0}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row["valid_loss"] = valid_loss()
        curve.append(row)
        if on_step:
            on_step(step + 1, row["train_loss"])
    model.eval()
    # Saved into a fresh folder beside the destination and swapped in whole (tasks.io.replace_dir): retraining a helper
    # never leaves new weights under an old manifest, and a kill leaves the previous helper as it was.
    dest = Path(out_dir)
    out_dir = aside_dir(dest)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_curve(out_dir, curve, vocab)
    manifest = {
        "format": FORMAT, "config": asdict(cfg), "parameters": int(sum(p.numel() for p in model.parameters())),
        "train_tokens": int(train.size), "valid_tokens": int(valid.size), "tokenizer_sha256": ident.tokenizer_sha256,
        "trained_with_target_tokenizer_of": ident.name, "seconds": round(time.time() - t0, 1),
        "final_train_loss": float(np.mean([r["train_loss"] for r in curve[-20:]])),
        "final_valid_loss": curve[-1]["valid_loss"], "context": cfg.context,
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    fsync_tree(out_dir)  # save_pretrained and savefig do not fsync
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
