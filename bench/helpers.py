"""Benchmark: helper prediction throughput batched vs one prompt at a time, and the cost of cross-tokenizer mapping.

Measured side by side in one run on the same prompts of a built suite (default ``wiki`` practice):
1. helper forward passes, ``batch_size`` prompts per pass vs one per pass: prompts/s of both, their ratio, and the
   largest difference between the two results (float rounding);
2. first-token mapping of the helper's distributions onto the target vocabulary: ms per prompt, and its share of the
   helper's batched forward time (ratio); the one-off table build time;
3. the mapping's error where it can be checked exactly: the target's own truth mapped through its own tokenizer, and
   through the helper's tokenizer and back (mean KL in nats against the unmapped truth).

    .venv/bin/python bench/helpers.py [--helper gemma3-270m] [--suite wiki] [--n 16] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helper", default="gemma3-270m", help="gemma3-270m, tiny-helper, or a model path")
    ap.add_argument("--suite", default="wiki")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import torch
    from scipy.stats import entropy

    from predictors.crosstok import TokenMap
    from predictors.model import MODEL_PREDICTORS, helper_logprobs, load_helper, resolve_helper_path
    from tasks import load_suite
    from tasks.tokens import encode_text

    suite = load_suite(args.suite)
    prompts = suite.prompts("practice")[: args.n]
    path = (MODEL_PREDICTORS[args.helper]({}) if args.helper in MODEL_PREDICTORS
            else resolve_helper_path(args.helper))
    t = time.perf_counter()
    helper = load_helper(path)
    print(f"helper {helper.identity['name']} ({helper.identity['id']}), loaded in {time.perf_counter() - t:.1f} s; "
          f"torch threads {torch.get_num_threads()}; {len(prompts)} prompts of {args.suite}/practice")
    texts = [p.text for p in prompts]
    ids = encode_text(helper.tokenizer, texts)
    ntok = sum(len(x) + len(helper.bos_ids) for x in ids)

    helper_logprobs(helper, texts[:2], token_ids=ids[:2], batch_size=2)  # warm-up
    t = time.perf_counter()
    batched = helper_logprobs(helper, texts, token_ids=ids, batch_size=args.batch_size)
    tb = time.perf_counter() - t
    t = time.perf_counter()
    single = np.concatenate([helper_logprobs(helper, [x], token_ids=[i], batch_size=1) for x, i in zip(texts, ids,
                                                                                                      strict=True)])
    ts = time.perf_counter() - t
    print(f"forward, batch {args.batch_size}: {len(texts) / tb:.2f} prompts/s ({ntok / tb:.0f} tokens/s)")
    print(f"forward, one at a time: {len(texts) / ts:.2f} prompts/s ({ntok / ts:.0f} tokens/s)")
    print(f"batched / one-at-a-time speed ratio: {ts / tb:.2f}x; max |log p| difference {np.abs(batched - single).max():.2e}")

    target_tok = suite.tokenizer()
    V = suite.vocab_size
    size = int(helper.model.get_output_embeddings().weight.shape[0])
    t = time.perf_counter()
    tm = TokenMap.build(helper.tokenizer, target_tok, V, size, cache=False)
    print(f"mapping table {size} -> {V} tokens: built in {time.perf_counter() - t:.1f} s (once; cached on disk), "
          f"{tm.mapped_fraction:.1%} of helper tokens mapped")
    for coverage in (1.0, 0.99):
        t = time.perf_counter()
        tm.map_logprobs(batched, coverage=coverage, rest="unigram", background=suite.background)
        tmap = time.perf_counter() - t
        print(f"mapping (coverage {coverage}): {1000 * tmap / len(texts):.1f} ms/prompt = {tmap / tb:.3f} of the "
              f"batched forward time")

    _, logp, _ = suite.truth_split("practice")
    logp = logp[: args.n].astype(np.float64)
    p = np.exp(logp)
    own = TokenMap.build(target_tok, target_tok, V, cache=False).map_logprobs(logp, rest="unigram",
                                                                             background=suite.background)
    there = TokenMap.build(target_tok, helper.tokenizer, size, V, cache=False)
    back = tm.map_probs(there.map_logprobs(logp, rest="uniform"), rest="unigram", background=suite.background)
    for label, q in (("own tokenizer", own), ("helper's tokenizer and back", back)):
        kl = np.array([entropy(a, b) for a, b in zip(p, q, strict=True)])
        print(f"mapping error, target truth through {label}: mean KL {kl.mean():.5f} nats, max {kl.max():.5f}")


if __name__ == "__main__":
    main()
