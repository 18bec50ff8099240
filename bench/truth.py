"""Benchmark: batched per-document truth vs a naive loop of one forward pass per prompt, on the same prompts.

Prints the speed ratio (naive time / batched time), tokens/s of both, and the largest difference between the two
results (it should be float rounding, ~1e-5). Uses a temporary suite with several cuts per document, as the sotu and
news suites have, so both savings show: shared passes per document and batching across documents.

    .venv/bin/python bench/truth.py [--docs 12] [--cuts 4] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--cuts", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", os.path.abspath(".logitpred/models"))
    os.environ["LOGITPRED_HOME"] = tempfile.mkdtemp(prefix="logitpred-bench-")

    import torch

    from tasks import SuiteConfig, build_suite, load_target
    from tasks.truth import compute_truth, direct_truth

    target = load_target()
    n = args.docs * args.cuts // 2
    cfg = SuiteConfig("bench", "wiki", practice=n, sealed=n, cuts_per_doc=args.cuts, max_doc_tokens=256,
                      max_docs=args.docs * 4)
    suite = build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    prompts = suite.prompts("practice") + suite.prompts("sealed")
    tokens = sum(len(p.token_ids) for p in prompts)
    docs = len({p.doc for p in prompts})
    print(f"{len(prompts)} prompts from {docs} documents, {tokens} prompt tokens, torch threads {torch.get_num_threads()}")

    compute_truth(target.model, prompts[:2])  # warm-up
    t0 = time.perf_counter()
    batched = compute_truth(target.model, prompts, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = np.stack([direct_truth(target.model, p.token_ids) for p in prompts])
    t_naive = time.perf_counter() - t0
    print(f"batched per-document: {t_batched:.2f} s ({tokens / t_batched:.0f} prompt tokens/s)")
    print(f"naive per-prompt:     {t_naive:.2f} s ({tokens / t_naive:.0f} prompt tokens/s)")
    print(f"speed-up ratio (naive / batched): {t_naive / t_batched:.2f}x")
    print(f"max |difference| in log-prob: {np.abs(batched - naive).max():.2e}")


if __name__ == "__main__":
    main()
