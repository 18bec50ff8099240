"""Benchmark: truth tokens/s against this machine's matmul peak measured in the same process, batch compositions, and
batched truth against a naive loop of one forward pass per prompt.

Prompts: cut from held-out ``--corpus`` text by the suites' own scheme (one window per passage, each its own truth
group, in a temporary data dir): wiki passages make prompts of ~16-180 tokens (mean ~65), sotu and news ~16-480 (mean
~200). One process, one thread count, in order:

1. Peak: the best of several ``torch.matmul`` of square matrices (2048 and 4096; 4096 and 8192 on a GPU) in the truth
   dtype on the truth device; on the CPU in float32 also the oneDNN kernel that truth's linear layers use there
   (``tasks.forward``: torch's default MKL sgemm takes its AVX2 path on AMD CPUs, oneDNN uses AVX-512). Peak = the
   best of all, measured at the start, at the end and before every timed truth run: on a machine others share, the
   best peak and the best truth time both come from its quiet moments (a peak measured only in a busy moment would
   flatter the ratio).
2. FLOPs of truth, from the model: per real token 2 x the weights of every linear layer but the output layer (q, k,
   v, o, MLP gate/up/down; checked against the config for Llama-like models), plus causal attention (scores and
   values, 2 x 2 x heads x head_dim per visible key, the causal half: position i sees i keys), plus the output layer
   at the kept positions only (2 x hidden x vocab per prompt). Padding is work but not useful: GFLOP/s are useful
   FLOPs / wall time, padding is reported as the share of extra token rows the batches ran. Norms, RoPE and
   activations are not counted (elementwise, a few FLOPs per value).
3. ``compute_truth`` at ``--batch-size`` (oneDNN linear layers on the CPU, and again with torch's default matmul for
   the before/after), then other batch compositions of the same length-sorted prompts: ``--sizes`` prompts per batch,
   and ``--budgets`` tokens per batch (rows x longest <= budget), each batch one ``compute_truth`` call; the best of
   ``--repeats`` runs each.
4. Where the time goes (CPU): one profiled ``compute_truth`` run, self time by kind of operation, and the GFLOP/s of
   the linear layers alone (padding rows included: what the kernels ran).
5. Naive: ``direct_truth`` (one plain forward per prompt, output layer at every position), and the largest difference.

Timings depend on the load of the machine (printed); on a shared 2-core machine one thread (``--threads 1``) is often
faster than two waiting for each other. Compare only figures printed by the same run.

    .venv/bin/python bench/truth.py [--prompts 200] [--corpus wiki] [--batch-size 8] [--sizes 4,32]
        [--budgets 1024] [--threads N] [--device cpu|cuda] [--dtype float32|bfloat16] [--repeats 2] [--no-naive]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np


def matmul_peak(torch: Any, device: str, dtype: Any, sizes: tuple[int, ...]) -> dict[str, float]:
    """GFLOP/s of the best of 3 square products of each size: ``torch.matmul``, and on the CPU in float32 the oneDNN
    linear kernel (``tasks.forward``) too."""
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    kernels = {"torch.matmul": lambda a, b: torch.matmul(a, b)}
    if device == "cpu" and dtype == torch.float32 and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        kernels["oneDNN linear"] = lambda a, b: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    out = {}
    for name, f in kernels.items():
        best = 0.0
        for n in sizes:
            a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
            f(a, b)
            for _ in range(3):
                sync()
                t0 = time.perf_counter()
                f(a, b)
                sync()
                best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        out[name] = best
    return out


def linear_weights(torch: Any, model: Any) -> int:
    """Weights of every linear layer but the output layer: the matmul parameters each token goes through."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def config_weights(c: Any) -> int | None:
    """The same from a Llama-like config (q, o: hidden x heads x head_dim; k, v: with kv heads; gated MLP: 3 x hidden x
    intermediate), None when the config does not name these sizes."""
    try:
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        attn = c.hidden_size * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
        return c.num_hidden_layers * (attn + 3 * c.hidden_size * c.intermediate_size)
    except AttributeError:
        return None


def useful_flops(c: Any, weights: int, vocab: int, lengths: list[int]) -> dict[str, float]:
    """FLOPs of truth for sequences of these lengths (BOS included), one kept position each (see the module doc)."""
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    n = np.asarray(lengths, dtype=np.float64)
    return {"linear": float(2 * weights * n.sum()),
            "attention": float(c.num_hidden_layers * 4 * c.num_attention_heads * hd * (n * (n + 1) / 2).sum()),
            "output": float(2 * c.hidden_size * vocab * len(n))}


def padded_rows(lengths: list[int], batches: list[list[int]]) -> int:
    """Token rows the batches run: each batch is right-padded to its longest sequence."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def by_count(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def by_budget(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Length-sorted prompts into batches of at most ``budget`` padded tokens (rows x longest; one row at least)."""
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[i] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200, help="prompts in all (half practice, half sealed)")
    ap.add_argument("--corpus", default="wiki", help="wiki (prompts of ~16-180 tokens), news or sotu (~16-480)")
    ap.add_argument("--max-doc-tokens", type=int, default=512, help="window size, as SuiteConfig.max_doc_tokens")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per batch, as compute_truth's batch_size")
    ap.add_argument("--sizes", default="4,32", help="other prompts-per-batch counts to compare (comma-separated)")
    ap.add_argument("--budgets", default="1024", help="token budgets per batch to compare (comma-separated)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default=None, help="float32 (default on cpu) or bfloat16 (default on cuda)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each configuration (the best is kept)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive one-pass-per-prompt loop")
    args = ap.parse_args()
    if args.prompts < 2:
        ap.error("--prompts must be at least 2")
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    sizes, budgets = ([int(b) for b in option.split(",") if b] for option in (args.sizes, args.budgets))
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", os.path.abspath(".logitpred/models"))
    os.environ["LOGITPRED_HOME"] = tempfile.mkdtemp(prefix="logitpred-bench-")

    import torch

    import tasks.forward
    from tasks import SuiteConfig, build_suite, load_target
    from tasks.compute import compute_truth, direct_truth

    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target(device=args.device, dtype=dtype_name)
    model, dtype, cfg = target.model, getattr(torch, dtype_name), target.model.config.get_text_config()
    half = args.prompts // 2
    suite_cfg = SuiteConfig("bench", args.corpus, practice=half, sealed=args.prompts - half,
                            max_doc_tokens=args.max_doc_tokens)
    suite = build_suite(suite_cfg, target.tokenizer, target.identity, target.vocab_size)
    prompts = suite.prompts("practice") + suite.prompts("sealed")
    bos = target.bos_ids
    lengths = [len(bos) + len(p.token_ids) for p in prompts]
    if len({p.doc for p in prompts}) != len(prompts):
        raise SystemExit("expected one truth group per prompt (one cut per window)")
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # compute_truth's order (stable sort by length)
    tokens = sum(lengths)
    print(f"{len(prompts)} prompts from {len({p.doc.rsplit('@', 1)[0] for p in prompts})} passages, {tokens} tokens "
          f"(BOS included; min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}); "
          f"{args.device} {dtype_name}, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    weights, vocab = linear_weights(torch, model), target.vocab_size
    fl = useful_flops(cfg, weights, vocab, lengths)
    useful = sum(fl.values())
    print(f"FLOPs per token: linear layers 2 x {weights / 1e6:.1f}M weights (config: "
          f"{(config_weights(cfg) or 0) / 1e6:.1f}M) = {2 * weights / 1e6:.0f} MFLOP; causal attention "
          f"{fl['attention'] / tokens / 1e6:.1f} MFLOP on average; output layer {fl['output'] / 1e6 / len(prompts):.0f}"
          f" MFLOP per prompt (kept position only). Useful FLOPs: {useful / 1e9:.0f} GFLOP (linear "
          f"{fl['linear'] / useful:.0%}, attention {fl['attention'] / useful:.0%}, output {fl['output'] / useful:.0%})")

    def truth(groups: list[list[int]]) -> np.ndarray:
        out = np.empty((len(prompts), vocab), dtype=np.float32)
        for g in groups:
            out[g] = compute_truth(model, [prompts[i] for i in g], bos_ids=bos, batch_size=len(g))
        return out

    compute_truth(model, prompts[:2], bos_ids=bos)  # warm-up
    label = f"compute_truth, {args.batch_size} prompts per batch"
    runs = [(label, by_count(order, args.batch_size), True)]
    if args.device == "cpu" and dtype_name == "float32":
        runs.append((label + ", torch's default matmul (before)", by_count(order, args.batch_size), False))
    runs += [(f"{n} prompts per batch (one compute_truth call per batch)", by_count(order, n), True) for n in sizes]
    runs += [(f"token budget {b} (one compute_truth call per batch)", by_budget(order, lengths, b), True)
             for b in budgets]
    # The peak is measured at the start and the end (2048 and 4096) and before every timed run (2048): on a shared
    # machine the best truth time and the best peak both come from its quiet moments.
    big, small = ((2048, 4096), (2048,)) if args.device == "cpu" else ((4096, 8192), (8192,))
    peaks = [matmul_peak(torch, args.device, dtype, big)]
    seconds, batched = [float("inf")] * len(runs), None
    for _ in range(args.repeats):
        for k, (_, groups, onednn) in enumerate(runs):
            peaks.append(matmul_peak(torch, args.device, dtype, small))
            tasks.forward.ONEDNN_LINEAR = onednn
            t0 = time.perf_counter()
            if k == 0:  # the suites' way: one call, compute_truth batches
                batched = compute_truth(model, prompts, bos_ids=bos, batch_size=args.batch_size)
            else:
                truth(groups)
            seconds[k] = min(seconds[k], time.perf_counter() - t0)
    tasks.forward.ONEDNN_LINEAR = True
    peaks.append(matmul_peak(torch, args.device, dtype, big))
    for kernel in peaks[0]:
        got = [p[kernel] for p in peaks]
        print(f"matmul peak, {kernel}: best {max(got):.0f} GFLOP/s, worst {min(got):.0f} ({len(got)} measurements "
              "spread over the run)")
    peak = max(v for p in peaks for v in p.values())
    print(f"peak: {peak:.0f} GFLOP/s; load average now {os.getloadavg()[0]:.1f}")
    print(f"{'truth (best of ' + str(args.repeats) + ')':<70} {'batches':>7} {'padding':>8} {'seconds':>8} "
          f"{'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for (label, groups, _), t in zip(runs, seconds, strict=True):
        print(f"{label:<70} {len(groups):>7} {padded_rows(lengths, groups) / tokens - 1:>8.1%} {t:>8.2f} "
              f"{tokens / t:>9.0f} {useful / t / 1e9:>8.1f} {useful / t / 1e9 / peak:>8.1%}")

    if args.device == "cpu":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            compute_truth(model, prompts, bos_ids=bos, batch_size=args.batch_size)
            wall = time.perf_counter() - t0
        kinds = {"linear layers (matmul)": 0.0, "attention (sdpa)": 0.0, "everything else": 0.0}
        for e in prof.key_averages():
            kind = ("linear layers (matmul)" if e.key in ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm")
                    else "attention (sdpa)" if "attention" in e.key or "bmm" in e.key else "everything else")
            kinds[kind] += e.self_cpu_time_total / 1e6
        rows = padded_rows(lengths, by_count(order, args.batch_size))
        ran = 2 * weights * rows + fl["output"]
        print(f"where the time goes ({args.batch_size} prompts per batch, profiled run {wall:.2f} s): " + ", ".join(
            f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in kinds.items()))
        print(f"linear layers alone: {ran / kinds['linear layers (matmul)'] / 1e9:.0f} GFLOP/s "
              f"({ran / kinds['linear layers (matmul)'] / 1e9 / peak:.0%} of peak, padding rows included); attention"
              f" {fl['attention'] / max(kinds['attention (sdpa)'], 1e-9) / 1e9:.0f} GFLOP/s (causal half counted)")

    if not args.no_naive:
        t0 = time.perf_counter()
        naive = np.stack([direct_truth(model, p.token_ids, bos_ids=bos) for p in prompts])
        t = time.perf_counter() - t0
        assert batched is not None
        print(f"naive, one plain pass per prompt: {t:.2f} s ({tokens / t:.0f} tokens/s); speed-up of "
              f"{runs[0][0]}: {t / seconds[0]:.1f}x; max |difference| in log-prob "
              f"{np.abs(batched - naive).max():.2e}")


if __name__ == "__main__":
    main()
