"""Benchmark: trajectory truth by the chain rule vs one pass per step, sampling with vs without KV cache, n-gram fast path.

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
3. whole-continuation answers of the n-gram (``ngram``: modified Kneser-Ney on the train parts of wiki, news and
   sotu) to the same questions (each prompt with its realized continuation and its K samples): the fast path
   (``predictors.chain_fast.ngram_answers``, straight from the index) vs the generic chain rule over its next-token
   predictions on the step prompts (``predictors.chain.answer_questions(..., generic=True)``: a full row per distinct
   step prompt); seconds, ratio, and the largest |difference| of log Q(y | x) and of any step's log q_t(y_t) (the
   fast path claims the same numbers: expect ~1e-13 nats or less, float64 rounding of the generic row's
   normalization summed over M steps). The predictor's
   context is a small next-token suite cut from wiki in the benchmark's own data folder (same corpus, seed and split
   as the prompts, so the index is the one ``logitpred run`` uses); the repo's token caches and indexes
   (``.logitpred/tokens``, ``.logitpred/indexes``) are hard-linked in when present (content-keyed and hash-checked on
   load; never written through), else built (~30 s);
4. with ``--precision``: the same truth from transformers in float16 and bfloat16 against float32, per continuation
   token (the basis of ``tasks.vllm_backend.TOLERANCE``).

Timings depend on the machine's load (printed) and on torch threads (``--threads``; on a shared machine one thread
is often faster than several spinning against each other); compare only numbers printed side by side.

    .venv/bin/python bench/trajectories.py [--prompts 24] [--k 4] [--m 8] [--batch-size 16] [--threads N] [--precision]
        [--no-ngram]

No timing is asserted anywhere: every figure is printed, ratios side by side at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def link_caches(home: Path, parts: tuple[str, ...] = ("tokens", "indexes")) -> list[str]:
    """Hard-link (copy where links fail) the repo's ``.logitpred/<part>`` folders into a fresh data folder ``home``:
    token caches and predictor indexes are keyed by content and checked by sha256 on load, and every write of the
    harness goes to a new file renamed into place (``tasks.io.atomic_write``), so the originals are never written
    through. Returns the parts linked (those present)."""
    done = []
    for part in parts:
        src = REPO / ".logitpred" / part
        if not src.is_dir():
            continue
        shutil.copytree(src, home / part, copy_function=_link_or_copy, dirs_exist_ok=True)
        done.append(part)
    return done


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):  # a data folder seeded before (reused with --home): keep what is there
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--k", type=int, default=4, help="continuations per prompt")
    ap.add_argument("--m", type=int, default=8, help="tokens per continuation")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--precision", action="store_true", help="also float16 and bfloat16 truth against float32")
    ap.add_argument("--no-ngram", action="store_true", help="skip the n-gram fast path vs generic chain rule")
    args = ap.parse_args()
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", str(REPO / ".logitpred" / "models"))
    home = Path(tempfile.mkdtemp(prefix="logitpred-bench-"))
    os.environ["LOGITPRED_HOME"] = str(home)
    os.environ["LOGITPRED_RESULTS"] = str(home / "results")

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
    prompts, realized = [], []
    for doc in held:
        ids = encode_text(target.tokenizer, doc.text)
        n = 32 + (len(prompts) * 7) % 64
        if len(ids) >= n + args.m:
            prompts.append(ids[:n])
            realized.append(ids[n : n + args.m])
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
    ratios = [("sampling: without / with KV cache", t_p / t_c, f"{n_p[2] / n_c[2]:.1f}x tokens computed"),
              ("truth: one pass per step / chain rule (shared prefix)", t_n / t_s,
               f"{n_n[1] / n_s[1]:.1f}x sequence passes"),
              ("truth: one pass per step / chain rule (batched, no sharing)", t_n / t_b,
               f"{n_n[1] / n_b[1]:.1f}x sequence passes")]

    if not args.no_ngram:
        t_g, t_f, d_total, d_step, n_q = ngram_vs_generic(target, prompts, realized, cached, home)
        ratios.append(("n-gram answers: generic chain rule / fast path", t_g / t_f,
                       f"max |Δ log Q| {d_total:.1e} nats over {n_q} questions (step {d_step:.1e})"))

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

    print(f"\nratios (same run, side by side; load average now {os.getloadavg()[0]:.1f}: on a shared machine every "
          "timing is noisy):")
    for name, r, note in ratios:
        print(f"  {name:60s} {r:7.2f}x   {note}")


def ngram_vs_generic(target, prompts, realized, sampled, home: Path) -> tuple[float, float, float, float, int]:
    """The n-gram's answers to every (prompt, continuation) of the benchmark by its fast path and by the generic chain
    rule (module doc, item 3); prints and returns ``(generic s, fast s, max |Δ log Q|, max |Δ step|, questions)``."""
    import numpy as np

    from predictors import PredictorContext, create
    from predictors.base import PromptView
    from predictors.chain import TrajectoryQuestion, answer_questions, fast_path
    from tasks import SuiteConfig, build_suite

    linked = link_caches(home)
    suite = build_suite(SuiteConfig(name="bench-ngram-context", corpus="wiki", practice=1, sealed=1),
                        target.tokenizer, target.identity, target.vocab_size)
    ctx = PredictorContext.from_suite(suite)
    t = time.perf_counter()
    predictor = create("ngram", ctx)
    t_load = time.perf_counter() - t
    tok = target.tokenizer
    questions = []
    for i, (x, r, ss) in enumerate(zip(prompts, realized, sampled, strict=True)):
        view = PromptView(f"bench-{i}", tok.decode(x, clean_up_tokenization_spaces=False), tuple(x))
        for j, y in enumerate([r, *ss]):
            questions.append(TrajectoryQuestion(view, f"bench-{i}-{'r' if j == 0 else f's{j}'}",
                                                "realized" if j == 0 else "sampled",
                                                tok.decode(y, clean_up_tokenization_spaces=False),
                                                tuple(int(v) for v in y)))
    method = fast_path(predictor)[0]
    answer_questions(predictor, ctx, questions[:2])  # warm-up (first lookups page the index in)
    answer_questions(predictor, ctx, questions[:2], generic=True)
    t = time.perf_counter()
    fast = answer_questions(predictor, ctx, questions)
    t_f = time.perf_counter() - t
    t = time.perf_counter()
    generic = answer_questions(predictor, ctx, questions, generic=True)
    t_g = time.perf_counter() - t
    d_total = max(abs(a.logprob - b.logprob) for a, b in zip(fast.predictions, generic.predictions, strict=True))
    d_step = max(float(np.abs(np.subtract(a.steps, b.steps)).max())
                 for a, b in zip(fast.predictions, generic.predictions, strict=True))
    steps = sum(len(q.token_ids) for q in questions)
    print(f"\nn-gram whole-continuation answers ({len(questions)} questions: realized + {len(sampled[0])} sampled per "
          f"prompt, {steps} steps; index loaded in {t_load:.1f} s, repo caches linked: {', '.join(linked) or 'none'}):")
    print(f"  {'fast path (' + method.split(':')[0] + '):':40s} {t_f:7.3f} s")
    print(f"  {'generic chain rule:':40s} {t_g:7.3f} s ({generic.method})")
    print(f"  generic / fast: {t_g / t_f:.1f}x time; max |difference| of log Q(y | x) {d_total:.2e} nats, of one "
          f"step's log q_t(y_t) {d_step:.2e} nats; generic fallbacks in the fast path: {fast.generic}")
    return t_g, t_f, d_total, d_step, len(questions)


if __name__ == "__main__":
    main()
