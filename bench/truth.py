"""Benchmark: batched truth, as suites compute it, vs a naive loop of one forward pass per prompt, on the same prompts.

Prints the speed ratio (naive time / batched time), tokens/s of both, and the largest difference between the two
results (it should be float rounding, ~1e-5).

What is compared. Suites take at most one cut per non-overlapping window (``tasks.cuts``), and each window is its own
truth group, so no two prompts share a forward pass any more: the saving measured here is batching prompts of
different documents into one right-padded forward pass (``tasks.truth.compute_truth``: length-sorted batches, output
layer only at the cut) against one full-model pass per prompt (``direct_truth``: batch of one, output layer at every
position). The prompts are cut from held-out wiki text by the suites' own scheme (``cuts_per_doc`` left unset: one
window per passage where that reaches the size), in a temporary data dir; the benchmark checks that every prompt is
its own truth group and prints how many passages they come from.

    .venv/bin/python bench/truth.py [--prompts 48] [--max-doc-tokens 256] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=48, help="prompts in all (half practice, half sealed)")
    ap.add_argument("--max-doc-tokens", type=int, default=256, help="window size, as SuiteConfig.max_doc_tokens")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    if args.prompts < 2:
        ap.error("--prompts must be at least 2")
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", os.path.abspath(".logitpred/models"))
    os.environ["LOGITPRED_HOME"] = tempfile.mkdtemp(prefix="logitpred-bench-")

    import torch

    from tasks import SuiteConfig, build_suite, load_target
    from tasks.compute import compute_truth, direct_truth

    target = load_target()
    half = args.prompts // 2
    cfg = SuiteConfig("bench", "wiki", practice=half, sealed=args.prompts - half, max_doc_tokens=args.max_doc_tokens)
    suite = build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    prompts = suite.prompts("practice") + suite.prompts("sealed")
    tokens = sum(len(p.token_ids) for p in prompts)
    groups = len({p.doc for p in prompts})
    passages = len({p.doc.rsplit("@", 1)[0] for p in prompts})
    if groups != len(prompts):
        raise SystemExit(f"expected one truth group per prompt (one cut per window), got {groups} for {len(prompts)}")
    print(f"{len(prompts)} prompts, one per window ({groups} truth groups) from {passages} passages, {tokens} prompt "
          f"tokens (mean {tokens / len(prompts):.0f}), batch size {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}")

    compute_truth(target.model, prompts[:2])  # warm-up
    t0 = time.perf_counter()
    batched = compute_truth(target.model, prompts, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = np.stack([direct_truth(target.model, p.token_ids) for p in prompts])
    t_naive = time.perf_counter() - t0
    print(f"batched across documents: {t_batched:.2f} s ({tokens / t_batched:.0f} prompt tokens/s)")
    print(f"naive, one pass per prompt: {t_naive:.2f} s ({tokens / t_naive:.0f} prompt tokens/s)")
    print(f"speed-up ratio (naive / batched): {t_naive / t_batched:.2f}x")
    print(f"max |difference| in log-prob: {np.abs(batched - naive).max():.2e}")


if __name__ == "__main__":
    main()
