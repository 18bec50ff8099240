"""Benchmark: trajectory truth by the chain rule vs one forward pass per step, and sampling with vs without KV cache.

On the real target (SmolLM2-135M, float32, CPU) and held-out wiki prompts (the first ``--prompts`` held-out passages
of at least ``prompt length + M`` tokens, prompts of 32-95 tokens), in one run:

1. sampling: ``K`` continuations of ``M`` tokens per prompt at temperature 1 (``tasks.continuations
   .sample_continuations``), with the KV cache (a prefix pass, then one token per row per step) and without it (the
   whole sequence again every step); seconds, ratio, and whether the samples are identical (same seed, same draws);
2. truth of those continuations with full distributions at every step: ``chain_rule_truth`` (one teacher-forced pass
   per continuation; the K continuations of a prompt share its prefix through the KV cache, or, with
   ``share_prefix=False``, are only batched) vs the naive path of one plain forward pass per step
   (``tasks.compute.direct_truth`` on prompt + y_<t: M passes per continuation). A hook on the model counts forward
   calls, sequence passes (rows through them: a batch of 16 is 16) and input tokens computed (a cached prefix is not
   computed again); the largest |difference| is over every step's full log-probability vector;
3. with ``--precision``: the same truth from transformers in float16 and bfloat16 against float32, per continuation
   token (the basis of ``tasks.vllm_backend.TOLERANCE``).

Timings depend on the machine's load (printed) and on torch threads (``--threads``; on a shared machine one thread
is often faster than several spinning against each other); compare only numbers printed side by side.

    .venv/bin/python bench/trajectories.py [--prompts 24] [--k 4] [--m 8] [--batch-size 16] [--threads N] [--precision]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--k", type=int, default=4, help="continuations per prompt")
    ap.add_argument("--m", type=int, default=8, help="tokens per continuation")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--precision", action="store_true", help="also float16 and bfloat16 truth against float32")
    args = ap.parse_args()
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", os.path.abspath(".logitpred/models"))
    os.environ["LOGITPRED_HOME"] = tempfile.mkdtemp(prefix="logitpred-bench-")

    import numpy as np
    import torch

    from tasks import load_target, read_corpus, split_documents
    from tasks.compute import direct_truth
    from tasks.continuations import Item, chain_rule_truth, prefix_sharing, sample_continuations
    from tasks.tokens import encode_text

    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target()
    model, bos = target.model, target.bos_ids
    _, held = split_documents(read_corpus("wiki"), seed=0, heldout_fraction=0.1)
    prompts = []
    for doc in held:
        ids = encode_text(target.tokenizer, doc.text)
        n = 32 + (len(prompts) * 7) % 64
        if len(ids) >= n + args.m:
            prompts.append(ids[:n])
        if len(prompts) == args.prompts:
            break
    count = np.zeros(3, dtype=np.int64)  # forward calls, rows (sequences) through them, input tokens computed

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        count[:] += (1, ids.shape[0], ids.numel())

    model.register_forward_hook(hook, with_kwargs=True)
    prefix_sharing(model)  # the one-off probe, outside the counts
    lens = [len(p) for p in prompts]
    print(f"{len(prompts)} held-out wiki prompts of {min(lens)}-{max(lens)} tokens, K={args.k} "
          f"continuations of M={args.m} tokens each, batch size {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    def run(fn):
        count[:] = 0
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t, count.copy()

    def show(name, seconds, c):
        print(f"  {name:40s} {seconds:7.2f} s, {c[0]:5d} forward calls, {c[1]:5d} sequence passes, {c[2]:6d} tokens in")

    def sample(use_cache: bool):
        return [sample_continuations(model, p, k=args.k, max_tokens=args.m, seed=args.seed, bos_ids=bos,
                                     use_cache=use_cache) for p in prompts]

    sample_continuations(model, prompts[0], k=args.k, max_tokens=2, seed=args.seed, bos_ids=bos)  # warm-up
    cached, t_c, n_c = run(lambda: sample(True))
    plain, t_p, n_p = run(lambda: sample(False))
    print("\nsampling (temperature 1, Gumbel-max, seeded):")
    show("with KV cache:", t_c, n_c)
    show("without KV cache:", t_p, n_p)
    print(f"  ratio (without / with): {t_p / t_c:.2f}x; identical samples: {'yes' if cached == plain else 'NO'}")

    items = [Item(p, c, True) for p, cs in zip(prompts, cached, strict=True) for c in cs]
    shared, t_s, n_s = run(lambda: chain_rule_truth(model, items, bos_ids=bos, batch_size=args.batch_size))
    batched, t_b, n_b = run(lambda: chain_rule_truth(model, items, bos_ids=bos, batch_size=args.batch_size,
                                                     share_prefix=False))

    def naive():
        return [np.stack([direct_truth(model, list(it.prompt_ids) + list(it.continuation_ids[:t]), bos_ids=bos)
                          for t in range(len(it.continuation_ids))]) for it in items]

    steps, t_n, n_n = run(naive)
    diff = max(max(float(np.abs(a.full - b).max()), float(np.abs(c.full - b).max()))
               for a, c, b in zip(shared, batched, steps, strict=True))
    own = max(float(np.abs(a.step_logprobs - b[np.arange(args.m), list(a.token_ids)]).max())
              for a, b in zip(shared, steps, strict=True))
    sums = max(abs(a.logprob - float(b[np.arange(args.m), list(a.token_ids)].astype(np.float64).sum()))
               for a, b in zip(shared, steps, strict=True))
    print(f"\ntruth of {len(items)} continuations (per-step log-probs and full distributions, {len(items) * args.m} "
          "steps):")
    show("chain rule, shared prefix (KV cache):", t_s, n_s)
    show("chain rule, batched, no sharing:", t_b, n_b)
    show("one pass per step (naive):", t_n, n_n)
    for name, t, c in (("shared prefix", t_s, n_s), ("batched", t_b, n_b)):
        print(f"  naive / {name}: {t_n / t:.2f}x time, {n_n[1] / c[1]:.1f}x sequence passes, {n_n[0] / c[0]:.1f}x "
              f"forward calls, {n_n[2] / c[2]:.1f}x tokens")
    print(f"  max |difference| vs naive: full distributions (both chain-rule paths) {diff:.2e}; the continuations' own "
          f"tokens {own:.2e}; whole-continuation log p(y | x) {sums:.2e} nats")

    if args.precision:
        ref = np.concatenate([s.step_logprobs for s in shared]).astype(np.float64)
        print("\nlow precision vs float32 (transformers, CPU), per continuation token:")
        for dtype in ("float16", "bfloat16"):
            low = load_target(dtype=dtype).model
            got = chain_rule_truth(low, [Item(it.prompt_ids, it.continuation_ids) for it in items], bos_ids=bos,
                                   batch_size=args.batch_size)
            d = np.abs(np.concatenate([g.step_logprobs for g in got]).astype(np.float64) - ref)
            print(f"  {dtype:8s}: max |Δ log p| {d.max():.4f} nats, mean {d.mean():.4f}, p99 "
                  f"{np.quantile(d, 0.99):.4f} ({d.size} tokens)")


if __name__ == "__main__":
    main()
