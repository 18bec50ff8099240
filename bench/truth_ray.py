"""Benchmark: sharded truth on this machine, in-process (``--backend local``) vs a local Ray cluster with 2 workers.

The same prompts (a small wiki suite, cut as suites are, in a temporary data dir) and the same shard plan go through
``tasks.shards.compute_truth_sharded``, each run into an empty work folder: with the local backend (one model,
torch's default threads: all cores), again with one torch thread (on a machine shared with other jobs, several
OpenMP threads can be much slower than one), and with ``--backend ray`` (a local Ray cluster started for the run on
this machine's cores, one model per worker, cores // workers torch threads each). The overhead is taken against the
faster local run. Nothing is left out silently: the Ray run's cluster start, model loads and cluster shutdown are
printed apart from its computation, and the overhead is given both ways (computation only, and the whole call).
Also printed: tokens/s, the shards, the load average (other jobs on the machine), and the largest differences between
the results (0 expected between runs with the same torch threads per model: the same passes; see docs/ray.md).

    .venv/bin/python bench/truth_ray.py [--prompts 96] [--max-doc-tokens 256] [--batch-size 8] [--shard-batches 1]
                                        [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=96, help="prompts in all (half practice, half sealed)")
    ap.add_argument("--max-doc-tokens", type=int, default=256, help="window size, as SuiteConfig.max_doc_tokens")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-batches", type=int, default=1, help="batches per shard")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers")
    args = ap.parse_args()
    if args.prompts < 2:
        ap.error("--prompts must be at least 2")
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", os.path.abspath(".logitpred/models"))
    home = Path(tempfile.mkdtemp(prefix="logitpred-bench-"))
    os.environ["LOGITPRED_HOME"] = str(home)
    os.environ.pop("RAY_ADDRESS", None)  # always a local cluster on this machine

    import torch

    from tasks import SuiteConfig, build_suite, load_target
    from tasks.shards import compute_truth_sharded

    target = load_target()
    half = args.prompts // 2
    cfg = SuiteConfig("bench", "wiki", practice=half, sealed=args.prompts - half, max_doc_tokens=args.max_doc_tokens)
    suite = build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    prompts = suite.prompts("practice") + suite.prompts("sealed")
    tokens = sum(len(p.token_ids) for p in prompts)
    print(f"{len(prompts)} prompts, {tokens} prompt tokens (mean {tokens / len(prompts):.0f}), batch size "
          f"{args.batch_size}, {args.shard_batches} batch(es) per shard; {len(os.sched_getaffinity(0))} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    def run(backend: str, **kw):  # each into an empty work folder: everything computed
        kw.setdefault("work_dir", home / f"shards-{backend}")
        return compute_truth_sharded(target, prompts, bos_ids=suite.bos_ids, batch_size=args.batch_size,
                                     shard_batches=args.shard_batches, backend=backend, **kw)

    threads = torch.get_num_threads()
    local, ls = run("local")
    print(f"local: {ls['shards']} shards, {ls['compute_seconds']:.2f} s computing "
          f"({tokens / ls['compute_seconds']:.0f} prompt tokens/s) with {threads} torch threads, "
          f"{ls['seconds']:.2f} s the whole call")
    torch.set_num_threads(1)  # what one Ray worker has here when the workers share the cores
    local1, l1 = run("local", work_dir=home / "shards-local-1")
    torch.set_num_threads(threads)
    print(f"local: {l1['compute_seconds']:.2f} s computing ({tokens / l1['compute_seconds']:.0f} prompt tokens/s) "
          "with 1 torch thread")
    ray_out, rs = run("ray", workers=args.workers)
    other = rs["seconds"] - rs["start_seconds"] - rs["load_seconds"] - rs["compute_seconds"]
    print(f"ray:   {rs['shards']} shards on {rs['workers']} workers, {rs['compute_seconds']:.2f} s computing "
          f"({tokens / rs['compute_seconds']:.0f} prompt tokens/s); cluster start {rs['start_seconds']:.2f} s, "
          f"model loads {rs['load_seconds']:.2f} s, planning + shutdown {other:.2f} s; {rs['seconds']:.2f} s the "
          "whole call")
    best = min(ls, l1, key=lambda s: s["compute_seconds"])
    print(f"overhead (ray / local - 1) against the faster local run: computation only "
          f"{rs['compute_seconds'] / best['compute_seconds'] - 1:+.1%}; whole call (cluster start and model loads "
          f"included) {rs['seconds'] / best['seconds'] - 1:+.1%}")
    print(f"max |difference| in log-prob: ray vs local with 1 thread {np.abs(ray_out - local1).max():.2e} (the same "
          f"threads per model), ray vs local with {threads} threads {np.abs(ray_out - local).max():.2e}, local "
          f"{threads} vs 1 thread {np.abs(local - local1).max():.2e}")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
