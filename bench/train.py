"""Benchmark: the helper trainer's throughput against this machine's float32 matmul peak, measured in the same run.

1. Peak: ``torch.mm`` of square float32 matrices (n = 256, 512, 1024, 2048) with 1 and with 2 threads, best of 5
   repeats of 3 products each; the peak is the highest, in FLOP/s = 2 n^3 / seconds. Measured before and again after
   the trainers; the summary lines divide by the higher of the two (the table's column by the first).
2. Trainer: optimizer steps per second of helpers of about 5M, 10M and 20M parameters (the shapes ``logitpred ladder``
   uses), on random windows of ``--batch-size`` x ``--context`` tokens, best of ``--steps`` timed steps after one
   untimed; for the trainer before this change ("legacy": Hugging Face loss on full logits, for-loop AdamW, torch's
   default thread count) and the current one (``predictors.train_helper.train_step``: exact chunked cross-entropy,
   fused AdamW), each at 1 and 2 threads.
3. Achieved FLOP/s = tokens/s x FLOP per token, with

       FLOP/token = 6 (N_body + V d) + 6 n_layer n_ctx d

   after Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", section 2.1: forward 2N + 2 n_layer n_ctx
   d_attn, backward twice the forward), except that the output layer is counted: Kaplan leave embeddings out of N,
   but the tied output matrix (V x d, V = 49,152) is a real matmul on every token, and for these helpers it is most of
   the work (94% at 5M). N_body: every parameter but the embedding (attention, MLP, norms); the embedding lookup and
   its gradient are not counted (no matmul). Tokens are the inputs of a step, B x n_ctx.

The machine may be shared: the load average is printed before and after (``os.getloadavg``, as ``uptime`` shows), and
"on-CPU" is the process's CPU time over wall time x threads during the fastest step (below 100%: other processes had
the cores part of the time, or the threads waited on each other). A short matmul finds a quiet moment more easily
than a training step of seconds, so under load the shares understate what the trainer does on a quiet machine.

    .venv/bin/python bench/train.py [--sizes 5M,10M,20M] [--steps 4] [--batch-size 8] [--context 96]
"""

from __future__ import annotations

import argparse
import os
import time

SIZES = {"5M": (96, 2), "10M": (160, 4), "20M": (256, 8)}  # name: (hidden, layers); heads = hidden // 32
VOCAB = 49152


def matmul_peak(threads: tuple[int, ...] = (1, 2), sizes: tuple[int, ...] = (256, 512, 1024, 2048),
                repeats: int = 5) -> tuple[float, dict[str, float]]:
    """(best FLOP/s, {"threads x n": FLOP/s}) of float32 ``torch.mm`` on square n x n matrices."""
    import torch

    table = {}
    for t in threads:
        torch.set_num_threads(t)
        for n in sizes:
            a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
            torch.mm(a, b, out=c)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(3):
                    torch.mm(a, b, out=c)
                best = min(best, (time.perf_counter() - t0) / 3)
            table[f"{t} x {n}"] = 2 * n**3 / best
    return max(table.values()), table


def flop_per_token(model, context: int) -> tuple[float, int, int]:
    """(FLOP per trained token, N_body, V d) by the formula of the module docstring."""
    cfg = model.config
    vd = cfg.vocab_size * cfg.hidden_size
    body = sum(p.numel() for p in model.parameters()) - vd  # tied: the embedding is counted once
    return 6.0 * (body + vd) + 6.0 * cfg.num_hidden_layers * context * cfg.hidden_size, body, vd


def _legacy_step(model, opt, batch) -> float:
    """The step of the trainer before this change (train_helper at c7fad75), verbatim."""
    import torch

    loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def tokens_per_second(kind: str, hidden: int, layers: int, threads: int, batch: int, context: int,
                      steps: int) -> tuple[float, float, object]:
    """(tokens/s of the fastest of ``steps`` timed steps, the share of that step's wall time x threads this process
    spent on a CPU, the model) for trainer ``kind`` ("legacy" or "current")."""
    import torch

    from predictors.train_helper import TrainConfig, build_model, make_optimizer, train_step

    torch.set_num_threads(threads)
    cfg = TrainConfig(hidden=hidden, layers=layers, heads=max(1, hidden // 32), context=context, batch_size=batch)
    model = build_model(cfg, VOCAB)
    model.train()
    if kind == "legacy":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    else:
        opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    best, on_cpu = float("inf"), 0.0
    for i in range(steps + 1):
        b = torch.randint(0, VOCAB, (batch, context + 1), generator=g)
        t0, c0 = time.perf_counter(), time.process_time()
        _legacy_step(model, opt, b) if kind == "legacy" else train_step(model, opt, b, cfg.lr)
        wall = time.perf_counter() - t0
        if i and wall < best:
            best, on_cpu = wall, (time.process_time() - c0) / (wall * threads)
    return batch * context / best, on_cpu, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5M,10M,20M", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after one untimed)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--context", type=int, default=96)
    args = ap.parse_args()
    import torch

    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch default threads {default_threads}, "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak, table = matmul_peak()
    print("float32 torch.mm GFLOP/s (threads x n): " + ", ".join(f"{k}: {v / 1e9:.1f}" for k, v in table.items()))
    print(f"peak measured in this run: {peak / 1e9:.1f} GFLOP/s")
    print(f"batch {args.batch_size} x context {args.context} tokens per step, best of {args.steps} timed steps")
    header = f"{'size':>4} {'params':>10} {'N_body':>9} {'MFLOP/tok':>9} {'trainer':>8} {'thr':>3} {'tok/s':>7} " \
             f"{'GFLOP/s':>8} {'% peak':>6} {'on-CPU':>6}"
    print(header)
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for name in args.sizes.split(","):
        hidden, layers = SIZES[name]
        for kind, threads in (("legacy", default_threads), ("legacy", 1), ("current", 1), ("current", 2)):
            tps, on_cpu, model = tokens_per_second(kind, hidden, layers, threads, args.batch_size, args.context, args.steps)
            fpt, body, vd = flop_per_token(model, args.context)
            share = tps * fpt / peak
            print(f"{name:>4} {body + vd:>10,} {body:>9,} {fpt / 1e6:>9.1f} {kind:>8} {threads:>3} {tps:>7.0f} "
                  f"{tps * fpt / 1e9:>8.1f} {100 * share:>5.1f}% {100 * on_cpu:>5.0f}%", flush=True)
            key = (name, kind)
            if kind == "current" or threads == default_threads:  # legacy as it ran: torch's default threads
                if key not in best or share > best[key][0]:
                    best[key] = (share, threads)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    again, _ = matmul_peak()  # the load may have changed: the higher of the two peaks is the denominator
    print(f"peak measured again after the trainers: {again / 1e9:.1f} GFLOP/s; shares below use "
          f"{max(peak, again) / 1e9:.1f}")
    best = {k: (v[0] * peak / max(peak, again), v[1]) for k, v in best.items()}
    for name in args.sizes.split(","):
        (old, t_old), (new, t_new) = best[(name, "legacy")], best[(name, "current")]
        print(f"{name}: legacy trainer ({t_old} threads) achieved {100 * old:.1f}% of the peak measured in this run; "
              f"current trainer ({t_new} thread{'s' if t_new > 1 else ''}) achieved {100 * new:.1f}% "
              f"({new / old:.1f}x)")


if __name__ == "__main__":
    main()
