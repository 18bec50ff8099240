"""Benchmark: the rare-behaviour reproduction table (issue 13 part 6) on the real target (SmolLM2-135M, float32, CPU).

Two parts, in one run:

1. **Estimators against exact P_D(B)** (Wu & Hilton 2024's table): naive Monte Carlo, ITGIS and MHIS
   (``tasks.rare.estimators``, registry defaults) at budgets of 2^8, 2^10, 2^12 target passes, on the reference set
   of ``logitpred rare build`` (the single-token behaviours of its record; P_D(B) exact from the record), at both
   temperatures, several fixed seeds per cell. Per (estimator, temperature, budget): mean |log10 error|, share within
   10x, share of zero estimates and the Itakura-Saito loss, with naive at the same budget beside each, and paired
   ratios (same distribution, behaviour, seed and budget) side by side. The reference tokens are picked at
   temperature 1 and are mostly never the argmax (exact P = 0 greedy), so ``--greedy-behaviours`` adds, per
   distribution, tokens picked by their exact P_D(argmax = t) (from the same enumeration), run at temperature 0 only.
   While ``logitpred rare build`` is still running, the rows of the distributions whose marginals it has cached are
   reconstructed with the build's own token pick (``partial_record``).
2. **Jones et al. 2025's protocol**: a pool of 22^3 = 10,648 inputs (a product distribution, uniform over the 22 most
   frequent hex tokens per position after the hex prefix; the pool is its support, so a uniform draw from the pool is
   a draw from D), enumerated once for the exact P(token | x) of every input; behaviours: single tokens whose pool
   maximum spreads log-uniformly over [--pool-low, --pool-high]. From m = 30, 100, 300 queries drawn from the pool
   (--draws per m, seeded, without replacement) the Gumbel tail (top 10, the paper's rank positions; and the
   expected-position variant) and the log-normal baseline forecast the worst-query risk at n = pool size (35x-355x
   extrapolation); share of forecasts within 10x of the true pool maximum and mean |ln error|, beside the paper's
   86% / 1.7 (Gumbel) and 2.4 (log-normal).

Scoring rules (stated, not floored). Error = log10(p_hat / p). A **zero estimate** (no sample saw the event) has an
infinite log error: it is never within 10x, it is left out of the *mean* |log10 error| and the *mean* IS loss (both
are over the nonzero estimates, their count printed) and counted in "zero share"; the *median* |log10 error| and the
*median* IS loss count it as +inf. IS loss = p/p_hat - ln(p/p_hat) - 1 (natural log; 0 iff exact; +inf for a zero
estimate). Rows whose exact P_D(B) is 0 (at temperature 0 a rare token is often never the argmax of any input) have
no log error: they are not run (every estimator here returns exactly 0 when f(x) = 0 on the whole support: naive
counts no hit, ITGIS's terms w f are 0, MHIS's numerator is 0) and are counted apart. "naive mostly sees zero": naive's
zero share > 50% in that cell (only possible at temperature 0; at temperature 1 naive averages P(B | x) > 0 and is
never exactly 0).

How the target is run (exact, and faster than calling it for every sample). The reference distributions' supports are
4,096 inputs, so each is enumerated once (prefix KV cache reused) for the exact log P(t | x) of every reference token
t and the argmax of every input, cached in the bench's data folder. The estimators run unchanged from the registry on
a ``TableScorer``: its forward answers (``evaluate``, ``log_prob``, ``greedy``) are looked up in that table, its
``log_prob_and_grad`` calls the real ``BehaviourScorer`` for inputs it has not seen before and remembers the answer
(per distribution and token, cached on disk); it counts passes exactly as the real scorer does (one forward per input
evaluated, one backward per gradient), so budgets mean what they mean for the real scorer. Estimates are the same
numbers as with the real scorer up to float32 batch-composition noise (the table is checked against the real scorer
on random inputs at the start: max |difference| of log P and greedy agreement printed); the wall time is not what
the estimators would take, and no timing is claimed for them.

    .venv/bin/python bench/rare.py                         # the full grid (hours on 2 CPU cores)
    .venv/bin/python bench/rare.py --distributions hex --behaviours 4 --seeds 3   # a subset
    .venv/bin/python bench/rare.py --no-grid               # the Jones et al. protocol only
        [--budgets 256,1024,4096] [--estimators naive,itgis,mhis,search_is] [--temperatures 1,0] [--reference FILE]
        [--data DIR] [--threads N] [--no-pool] [--draws 1000] [--pool-behaviours 6] [--out FILE]

The reference record is read (never written) from the repository's ``.logitpred/rare/<spec sha16>-<target id>/``
(``--reference`` for another); the bench's own caches live in ``--data`` (default ``.logitpred/bench/rare``, used as
``LOGITPRED_HOME``; the repo's token caches are hard-linked in, the model cache is the repo's). No timing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PAPER = {"gumbel_within10": 0.86, "gumbel_abs_ln": 1.7, "lognormal_abs_ln": 2.4}


def link_caches(home: Path, parts: tuple[str, ...] = ("tokens",)) -> None:
    """Hard-link the repo's content-keyed token caches into the bench home (never written through: every write of
    the harness renames a new file into place)."""
    for part in parts:
        src = REPO / ".logitpred" / part
        if src.is_dir():
            shutil.copytree(src, home / part, copy_function=_link_or_copy, dirs_exist_ok=True)


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):  # linked by an earlier run (content-keyed names)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- exact per-input tables ------------------------------------------------------------------------------------------
def dist_from_record(rec: dict[str, Any], did: str) -> Any:
    from tasks.rare.distributions import ProductDistribution

    d = rec["distributions"][did]
    text = next(x["prefix"] for x in rec["spec"]["distributions"] if x["id"] == did)
    out = ProductDistribution(did, tuple(d["prefix"]), text, tuple(np.array(t, dtype=np.int64) for t in d["ids"]),
                              tuple(np.array(p, dtype=np.float64) for p in d["probs"]))
    assert out.key() == {k: d[k] for k in out.key()}, f"distribution {did}: record and rebuilt key differ"
    return out


def row_index(dist: Any, x: np.ndarray) -> np.ndarray:
    """Row of each input in ``dist.enumerate`` order (mixed radix over positions' support indices)."""
    x = np.asarray(x, dtype=np.int64)
    out = np.zeros(len(x), dtype=np.int64)
    for i, t in enumerate(dist.ids):
        pos = {int(v): j for j, v in enumerate(t.tolist())}
        out = out * len(t) + np.array([pos[int(v)] for v in x[:, i].tolist()], dtype=np.int64)
    return out


def enumerate_table(target: Any, dist: Any, tokens: list[int], path: Path, *, batch: int = 256,
                    candidates_from: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per input of ``dist``'s support (enumeration order): ``lp`` (N, len(tokens)) float32 log P(t | x), ``argmax``
    (N,), ``logw`` (N,) log p_D(x), and ``vmax`` (V,) the largest P(v | x) over the support; cached at ``path``."""
    import torch

    from tasks.rare.scorer import PrefixRunner

    if path.is_file():
        with np.load(path) as z:
            if z["tokens"].tolist() == list(tokens):
                return dict(z)
    runner = PrefixRunner(target.model, target.bos_ids + list(dist.prefix))
    cols = torch.as_tensor(np.array(tokens, dtype=np.int64))
    lps, arg, logw, vmax = [], [], [], None
    t0, done = time.time(), 0
    for x, lw in dist.enumerate(batch):
        lsm = torch.log_softmax(runner.logits(torch.as_tensor(x), keep=1)[:, -1].float(), dim=-1)
        lps.append(lsm[:, cols].numpy())
        arg.append(lsm.argmax(dim=-1).numpy())
        m = lsm.max(dim=0).values.numpy()
        vmax = m if vmax is None else np.maximum(vmax, m)
        logw.append(lw)
        done += len(x)
        print(f"\r  enumerating {dist.id}: {done}/{dist.support_size} inputs, {time.time() - t0:.0f} s",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = {"tokens": np.array(tokens, dtype=np.int64), "lp": np.concatenate(lps), "argmax": np.concatenate(arg),
           "logw": np.concatenate(logw), "vmax": vmax, "seconds": np.array(time.time() - t0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


class TableScorer:
    """A ``BehaviourScorer`` for one single-token behaviour whose forward answers come from an exact per-input table
    and whose gradients come from the real scorer, remembered per input (module doc). Counts passes as the real one.
    It offers what every registered estimator calls: ``evaluate``, ``log_prob``, ``greedy``, ``log_prob_and_grad``,
    ``log_prob_grad_greedy``, ``passes``, ``prefix``, ``members``, ``batch_size``."""

    def __init__(self, real: Any, dist: Any, lp: np.ndarray, argmax: np.ndarray, token: int, grad_path: Path) -> None:
        from tasks.rare.scorer import Passes

        self.real, self.dist, self.token = real, dist, token
        self.prefix, self.members, self.batch_size = real.prefix, real.members, real.batch_size
        self.lp = lp.astype(np.float64) if lp is not None else None  # None: greedy-only behaviour
        self.hit = argmax == token
        self.passes = Passes()
        self.grad_path = grad_path
        self.memo: dict[int, tuple[float, np.ndarray]] = {}
        self.computed = 0  # real gradient passes run (memo misses)
        if grad_path.is_file():
            with np.load(grad_path) as z:
                for r, v, g in zip(z["rows"].tolist(), z["lp"].tolist(), z["g"], strict=True):
                    self.memo[r] = (v, g)

    def save(self) -> None:
        if not self.memo:
            return
        rows = np.array(sorted(self.memo), dtype=np.int64)
        self.grad_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.grad_path.with_suffix(".tmp.npz")
        np.savez(tmp, rows=rows, lp=np.array([self.memo[r][0] for r in rows.tolist()]),
                 g=np.stack([self.memo[r][1] for r in rows.tolist()]))
        os.replace(tmp, self.grad_path)

    def fill_lp(self) -> None:
        """A greedy-only behaviour's log P(t | x) column, from the real scorer over the whole support (one forward per
        input, prefix cache reused; not counted on this scorer's passes), cached beside the gradients. Run the first
        time ``evaluate`` is called: ``search_is`` ranks the inputs its search evaluates by log P(B | x) at both
        temperatures, as the real ``BehaviourScorer.evaluate`` returns it."""
        path = self.grad_path.with_name(self.grad_path.stem + "-lp.npz")
        if path.is_file():
            with np.load(path) as z:
                self.lp = z["lp"].astype(np.float64)
            return
        t0 = time.time()
        self.lp = np.concatenate([self.real.evaluate(x)[0] for x, _ in self.dist.enumerate(256)])
        print(f"  token {self.token}: log P column of the {len(self.lp)} inputs from the real scorer, "
              f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, lp=self.lp)
        os.replace(tmp, path)

    def evaluate(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.lp is None:
            self.fill_lp()
        r = row_index(self.dist, free)
        self.passes.forward += len(r)
        return self.lp[r], self.hit[r]

    def log_prob(self, free: np.ndarray) -> np.ndarray:
        return self.evaluate(free)[0]

    def greedy(self, free: np.ndarray) -> np.ndarray:
        return self.evaluate(free)[1]

    def log_prob_grad_greedy(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lp, g = self.log_prob_and_grad(free)  # counts the forward + backward passes
        return lp, g, self.hit[row_index(self.dist, np.asarray(free, dtype=np.int64))]

    def log_prob_and_grad(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        free = np.asarray(free, dtype=np.int64)
        r = row_index(self.dist, free)
        missing = sorted(set(r.tolist()) - set(self.memo))
        if missing:
            first = {v: j for j, v in reversed(list(enumerate(r.tolist())))}
            xs = free[[first[v] for v in missing]]
            vals, grads = self.real.log_prob_and_grad(xs)
            for v, val, g in zip(missing, vals.tolist(), grads, strict=True):
                self.memo[v] = (val, np.stack([g[i, t] for i, t in enumerate(self.dist.ids)]).astype(np.float32))
            self.computed += len(missing)
        V = self.real.model.get_input_embeddings().weight.shape[0]
        out = np.zeros((len(r), self.dist.k, V), dtype=np.float32)
        for n, v in enumerate(r.tolist()):
            for i, t in enumerate(self.dist.ids):
                out[n, i, t] = self.memo[v][1][i]
        self.passes.forward += len(r)
        self.passes.backward += len(r)
        return np.array([self.memo[v][0] for v in r.tolist()]), out


# --- scoring ---------------------------------------------------------------------------------------------------------
def is_loss(p: float, q: float) -> float:
    """Itakura-Saito loss of estimate q for truth p > 0: p/q - ln(p/q) - 1; +inf for q = 0."""
    if q <= 0:
        return math.inf
    r = p / q
    return r - math.log(r) - 1.0


def cell_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    err = np.array([r["abs_log10"] for r in rows], dtype=np.float64)  # inf for zeros
    isl = np.array([r["is"] for r in rows], dtype=np.float64)
    nz = np.isfinite(err)
    return {"n": len(rows), "nonzero": int(nz.sum()), "mean_abs_log10": float(err[nz].mean()) if nz.any() else None,
            "median_abs_log10": float(np.median(err)) if len(err) else None,
            "within10": float((err <= 1.0).mean()) if len(err) else None, "zero_share": float((~nz).mean()),
            "mean_is": float(isl[nz].mean()) if nz.any() else None,
            "median_is": float(np.median(isl)) if len(isl) else None}


def fmt(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


# --- part 1: the estimator grid --------------------------------------------------------------------------------------
def run_grid(args: argparse.Namespace, target: Any, rec: dict[str, Any], data: Path) -> list[dict[str, Any]]:
    from tasks.rare.estimators import estimate
    from tasks.rare.scorer import BehaviourScorer

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    tid = rec["target"]["id"]
    dists = [d for d in rec["distributions"] if rec["distributions"][d].get("kind") == "product"]
    if args.distributions:
        unknown = set(args.distributions) - set(dists)
        if unknown:
            sys.exit(f"unknown distribution(s) {sorted(unknown)}: the record has {dists}")
        dists = [d for d in dists if d in args.distributions]
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed at the end
    for did in dists:
        dist = dist_from_record(rec, did)
        ref = [r for r in rec["rows"] if r["distribution"] == did and not r["declared"] and "token" in r
               and not r.get("greedy_pick")]  # bench picks its own greedy extras from the table
        p_exact = {(r["token"], r["temperature"]): r["p_exact"] for r in ref}
        toks = sorted({r["token"] for r in ref}, key=lambda t: p_exact[(t, 1)])
        t0 = time.time()
        table = enumerate_table(target, dist, toks, data / "tables" / f"{dist.sha256()[:16]}-{tid}.npz")
        # check: the table's exact sums against the record, and its rows against the real scorer
        w = np.exp(table["logw"])
        rel1 = max(abs(float((w * np.exp(table["lp"][:, j])).sum()) / p_exact[(t, 1)] - 1) for j, t in enumerate(toks))
        d0 = max(abs(float(w[table["argmax"] == t].sum()) - p_exact[(t, 0)]) for t in toks)
        rng = np.random.default_rng(12345)
        x = dist.sample(32, rng)
        sc = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=dist.prefix, members=[[toks[0]]])
        lp_real, hit_real = sc.evaluate(x)
        ri = row_index(dist, x)
        dlp = float(np.abs(lp_real - table["lp"][ri, 0]).max())
        agree = float((hit_real == (table["argmax"][ri] == toks[0])).mean())
        print(f"\n{did}: support {dist.support_size}, table {time.time() - t0:.1f} s (enumeration "
              f"{float(table['seconds']):.1f} s when built); vs record: max rel. diff of P_D(t) {rel1:.1e}, max |diff| "
              f"of greedy P_D(t) {d0:.1e}; vs BehaviourScorer on 32 inputs: max |diff log P| {dlp:.1e}, greedy "
              f"agreement {agree:.0%}", flush=True)
        if args.behaviours < len(toks):
            pick = np.unique(np.round(np.linspace(0, len(toks) - 1, args.behaviours)).astype(int))
            toks = [toks[i] for i in pick]
        work = [(t, "reference", p_exact[(t, 1)], p_exact[(t, 0)]) for t in toks]
        if args.greedy_behaviours and 0 in args.temperatures:
            from tasks.rare.exact import pick_tokens

            V = target.model.get_input_embeddings().weight.shape[0]
            p0 = np.bincount(table["argmax"], weights=w, minlength=V)
            inside = int(((p0 >= args.greedy_low) & (p0 <= args.greedy_high)).sum() - sum(
                args.greedy_low <= p0[t] <= args.greedy_high for t in table["tokens"].tolist()))
            extra = pick_tokens(p0, min(args.greedy_behaviours, inside), args.greedy_low, args.greedy_high,
                                exclude=set(table["tokens"].tolist())) if inside else []
            print(f"  greedy extras: {len(extra)} tokens by exact P_D(argmax = t) over [{args.greedy_low:g}, "
                  f"{args.greedy_high:g}] ({inside} tokens in range): "
                  + ", ".join(f"{t} {target.tokenizer.decode([t])!r} P {p0[t]:.2e} (the argmax of "
                              f"{int((table['argmax'] == t).sum())} of the {dist.support_size} inputs)" for t in extra),
                  flush=True)
            work += [(t, "greedy-extra", None, float(p0[t])) for t in extra]
        for tok, kind, p1, p0_t in work:
            cols = table["tokens"].tolist()
            real = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=dist.prefix, members=[[tok]],
                                   batch_size=32)
            ts = TableScorer(real, dist, table["lp"][:, cols.index(tok)] if tok in cols else None, table["argmax"],
                             tok, data / "grads" / f"{dist.sha256()[:16]}-{tid}-{tok}.npz")
            for temp in args.temperatures if kind == "reference" else [0]:
                p = p1 if temp == 1 else p0_t
                if p == 0.0:
                    skipped.append({"distribution": did, "token": tok, "temperature": temp})
                    continue
                for budget in args.budgets:
                    for seed in args.seeds:
                        for est in args.estimators:
                            before, s0 = ts.computed, time.time()
                            e = estimate(est, ts, dist, budget=budget, seed=seed, temperature=temp)
                            q = e.value
                            row = {"set": kind, "distribution": did, "token": tok,
                                   "text": target.tokenizer.decode([tok]),
                                   "temperature": temp, "budget": budget, "seed": seed, "estimator": est,
                                   "p_exact": p, "estimate": q, "passes": e.passes.total,
                                   "abs_log10": abs(math.log10(q / p)) if q > 0 else math.inf,
                                   "log10_error": math.log10(q / p) if q > 0 else None,
                                   "is": is_loss(p, q), "grad_computed": ts.computed - before,
                                   "seconds": round(time.time() - s0, 2)}
                            assert e.passes.total <= budget
                            rows.append(row)
                            if out:
                                out.write(json.dumps(row) + "\n")
                                out.flush()
                    ts.save()  # after every budget: an interrupted run keeps its gradients
                done = [r for r in rows if r["distribution"] == did and r["token"] == tok and r["temperature"] == temp]
                errs = {est: np.median([r["abs_log10"] for r in done if r["estimator"] == est])
                        for est in args.estimators}
                print(f"  {did} token {tok} {target.tokenizer.decode([tok])!r} T={temp} P={p:.2e}: median |log10 err| "
                      + ", ".join(f"{k} {fmt(float(v))}" for k, v in errs.items())
                      + f" | {ts.computed} gradients computed so far, load {load()}", flush=True)
    if out:
        out.close()
    report_grid(args, [r for r in rows if r["set"] == "reference"], skipped, "reference set")
    extra = [r for r in rows if r["set"] == "greedy-extra"]
    if extra:
        report_grid(args, extra, [], "greedy extras (temperature 0, tokens picked by exact P_D(argmax = t))")
    return rows


def report_grid(args: argparse.Namespace, rows: list[dict[str, Any]], skipped: list[dict[str, Any]] | None,
                title: str) -> None:
    print(f"\n## Estimators vs exact P_D(B): {title}\n")
    n_beh = len({(r["distribution"], r["token"]) for r in rows})
    temps = ("not known from saved rows (they are never run, so never saved)" if skipped is None else ", ".join(
        f"T={t}: {sum(s['temperature'] == t for s in skipped)}" for t in args.temperatures))
    print(f"{n_beh} behaviours (distribution, token) x seeds {args.seeds} x budgets {args.budgets}; "
          f"(behaviour, temperature) rows with exact P_D(B) = 0, not run: {temps}\n")
    print("| T | budget | estimator | n (nonzero) | mean abs log10 err | median | within 10x | zero share | mean IS "
          "| median IS | naive: mean abs log10 err | naive within 10x | naive zero share | naive median IS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for temp in args.temperatures:
        for budget in args.budgets:
            cells = {est: [r for r in rows if r["temperature"] == temp and r["budget"] == budget
                           and r["estimator"] == est] for est in args.estimators}
            nv = cell_stats(cells["naive"]) if cells.get("naive") else None
            for est in args.estimators:
                if not cells[est]:
                    continue
                s = cell_stats(cells[est])
                print(f"| {temp} | {budget} | {est} | {s['n']} ({s['nonzero']}) | {fmt(s['mean_abs_log10'])} | "
                      f"{fmt(s['median_abs_log10'])} | {fmt(s['within10'], '.0%')} | {fmt(s['zero_share'], '.0%')} | "
                      f"{fmt(s['mean_is'], '.3g')} | {fmt(s['median_is'], '.3g')} | "
                      + (f"{fmt(nv['mean_abs_log10'])} | {fmt(nv['within10'], '.0%')} | {fmt(nv['zero_share'], '.0%')}"
                         f" | {fmt(nv['median_is'], '.3g')} |" if nv else "- | - | - | - |"))
    if "naive" not in args.estimators:
        return
    print("\n### Paired against naive at the same budget (same distribution, behaviour, seed)\n")
    print("Ratio = estimator's mean abs log10 error / naive's over the pairs where both are nonzero; wins = share of "
          "pairs with a smaller abs log10 error (a zero estimate's error is +inf; both zero = a tie, half a win); "
          "'naive mostly zero' = naive's zero share > 50% in the cell.\n")
    print("| T | budget | estimator | pairs | both nonzero | ratio of mean abs log10 err | wins vs naive | "
          "IS-loss ratio (median) | naive mostly zero |")
    print("|---|---|---|---|---|---|---|---|---|")
    key = ("distribution", "token", "temperature", "budget", "seed")
    naive = {tuple(r[k] for k in key): r for r in rows if r["estimator"] == "naive"}
    for temp in args.temperatures:
        for budget in args.budgets:
            nv = [r for r in naive.values() if r["temperature"] == temp and r["budget"] == budget]
            mostly_zero = bool(nv) and cell_stats(nv)["zero_share"] > 0.5
            for est in args.estimators:
                if est == "naive":
                    continue
                pairs = [(r, naive[tuple(r[k] for k in key)]) for r in rows if r["estimator"] == est
                         and r["temperature"] == temp and r["budget"] == budget and tuple(r[k] for k in key) in naive]
                if not pairs:
                    continue
                both = [(a, b) for a, b in pairs if math.isfinite(a["abs_log10"]) and math.isfinite(b["abs_log10"])]
                ratio = (np.mean([a["abs_log10"] for a, _ in both]) / np.mean([b["abs_log10"] for _, b in both])
                         if both else None)
                wins = np.mean([1.0 if a["abs_log10"] < b["abs_log10"] else 0.5 if a["abs_log10"] == b["abs_log10"]
                                else 0.0 for a, b in pairs])
                mi = np.median([a["is"] for a, _ in pairs])
                mn = np.median([b["is"] for _, b in pairs])
                isr = mi / mn if math.isfinite(mi) and math.isfinite(mn) and mn > 0 else None
                print(f"| {temp} | {budget} | {est} | {len(pairs)} | {len(both)} | {fmt(ratio)} | {wins:.0%} | "
                      f"{fmt(isr)} | {'yes' if mostly_zero else 'no'} |")


def report_rows(args: argparse.Namespace) -> None:
    """The grid's tables from rows saved by earlier runs' ``--out`` (e.g. one run per distribution, in parallel):
    the same ``report_grid`` over their union; the budgets, seeds, temperatures and estimators are the rows' own."""
    missing = [str(f) for f in args.rows if not f.is_file()]
    if missing:
        sys.exit(f"--rows: no such file(s) {missing}: give the files written by --out")
    rows = [json.loads(line) for f in args.rows for line in f.read_text().splitlines() if line.strip()]
    key = ("distribution", "token", "temperature", "budget", "seed", "estimator")
    unique = {tuple(r[k] for k in key): r for r in rows}  # --out appends: a re-run (or a file given twice) counts once
    if len(unique) < len(rows):
        print(f"{len(rows) - len(unique)} repeated rows (same distribution, token, temperature, budget, seed and "
              "estimator) dropped: the last one of each kept")
    rows = list(unique.values())
    if not rows:
        sys.exit(f"no rows in {[str(f) for f in args.rows]}: write them with --out FILE")
    args.temperatures = sorted({r["temperature"] for r in rows}, reverse=True)
    args.budgets = sorted({r["budget"] for r in rows})
    args.seeds = sorted({r["seed"] for r in rows})
    seen = list(dict.fromkeys(r["estimator"] for r in rows))
    args.estimators = (["naive"] if "naive" in seen else []) + [e for e in seen if e != "naive"]
    for did in dict.fromkeys(r["distribution"] for r in rows):
        mine = [r for r in rows if r["distribution"] == did]
        print(f"{did}: {len(mine)} rows; tokens " + ", ".join(
            f"{t} {txt!r} ({kind}, T={temp}, P {p:.2e})" for t, txt, kind, temp, p in
            dict.fromkeys((r["token"], r["text"], r["set"], r["temperature"], r["p_exact"]) for r in mine)))
    report_grid(args, [r for r in rows if r["set"] == "reference"], None, "reference set")
    extra = [r for r in rows if r["set"] == "greedy-extra"]
    if extra:
        report_grid(args, extra, [], "greedy extras (temperature 0, tokens picked by exact P_D(argmax = t))")


# --- part 2: Jones et al. ------------------------------------------------------------------------------------------
def run_pool(args: argparse.Namespace, target: Any, rec: dict[str, Any], data: Path) -> None:
    from tasks.rare.distributions import ProductDistribution
    from tasks.rare.reference import make_distribution

    decl = {"id": "pool", "kind": "product", "prefix": args.pool_prefix, "tokens": args.pool_tokens,
            "positions": args.pool_positions, "size": args.pool_size}
    base = make_distribution(decl, target, rec["spec"]["corpus"])
    k, s = base.k, len(base.ids[0])
    pool = ProductDistribution("pool", base.prefix, base.prefix_text, base.ids, (np.full(s, 1.0 / s),) * k)
    n = pool.support_size
    tid = rec["target"]["id"]
    t0 = time.time()
    # candidates: tokens whose largest P(t | x) over 1,024 seeded pool inputs lies in a wide range around the target
    cand_path = data / "pool" / f"{pool.sha256()[:16]}-{tid}-candidates.json"
    if cand_path.is_file():
        cands = json.loads(cand_path.read_text())
    else:
        import torch

        from tasks.rare.scorer import PrefixRunner

        runner = PrefixRunner(target.model, target.bos_ids + list(pool.prefix))
        x = pool.sample(1024, np.random.default_rng(7))
        vmax = None
        for a in range(0, len(x), 256):
            lsm = torch.log_softmax(runner.logits(torch.as_tensor(x[a:a + 256]), keep=1)[:, -1].float(), dim=-1)
            m = lsm.max(dim=0).values.numpy()
            vmax = m if vmax is None else np.maximum(vmax, m)
        lo, hi = math.log(args.pool_low / 10), math.log(args.pool_high)
        ok = np.flatnonzero((vmax >= lo) & (vmax <= hi))
        cands = ok[np.argsort(vmax[ok])][np.round(np.linspace(0, len(ok) - 1, min(256, len(ok)))).astype(int)]
        cands = sorted(set(int(c) for c in cands))
        cand_path.parent.mkdir(parents=True, exist_ok=True)
        cand_path.write_text(json.dumps(cands))
    table = enumerate_table(target, pool, cands, data / "pool" / f"{pool.sha256()[:16]}-{tid}.npz")
    lp = table["lp"].astype(np.float64)
    pmax = lp.max(axis=0)
    ok = np.flatnonzero((pmax >= math.log(args.pool_low)) & (pmax <= math.log(args.pool_high)))
    order = ok[np.argsort(pmax[ok])]
    spread = order[np.unique(np.round(np.linspace(0, len(order) - 1, args.pool_behaviours)).astype(int))]
    near = (lp >= pmax - math.log(10)).sum(axis=0)  # inputs within 10x of the pool max, per candidate
    isolated = ok[np.argsort(near[ok], kind="stable")][: args.pool_behaviours]
    print(f"\n## Jones et al. protocol: pool of {n:,} inputs ({args.pool_size} {args.pool_tokens} tokens, uniform, at "
          f"{args.pool_positions} positions after {args.pool_prefix!r}); table {time.time() - t0:.1f} s (enumeration "
          f"{float(table['seconds']):.1f} s when built); {len(cands)} candidate tokens, {len(ok)} with a pool maximum "
          f"in [{args.pool_low:g}, {args.pool_high:g}]; {args.draws} draws per m and behaviour, top {args.top}; "
          f"forecast n = {n:,}", flush=True)
    for name, chosen in (("spread: pool maxima log-uniform over the range", spread),
                         ("isolated: the fewest inputs within 10x of the pool max", isolated)):
        pool_table(args, target, table, lp, pmax, near, chosen, n, name)


def pool_table(args: argparse.Namespace, target: Any, table: dict[str, np.ndarray], lp: np.ndarray,
               pmax: np.ndarray, near: np.ndarray, chosen: np.ndarray, n: int, name: str) -> None:
    from tasks.rare.estimators import fit_gumbel_tail, fit_lognormal, forecast_worst, forecast_worst_lognormal

    print(f"\n### Behaviours {name}\n")
    print("| token | pool max P | pool median P | inputs within 10x of max |")
    print("|---|---|---|---|")
    for c in chosen:
        tok = int(table["tokens"][c])
        print(f"| {tok} {target.tokenizer.decode([tok])!r} | {math.exp(pmax[c]):.2e} | "
              f"{math.exp(float(np.median(lp[:, c]))):.2e} | {int(near[c])} |")
    print("\n| m | n/m | Gumbel (rank) within 10x | mean abs ln err | median signed ln err | Gumbel (expected "
          "positions) within 10x | mean abs ln err | log-normal within 10x | mean abs ln err | max of the m within "
          "10x | mean abs ln err | paper: Gumbel | paper: log-normal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    per: dict[int, list[str]] = {}
    for m in args.ms:
        errs: dict[str, list[float]] = {"rank": [], "expected": [], "lognormal": [], "empirical": []}
        for c in chosen:
            col = lp[:, c]
            rng = np.random.default_rng([args.pool_seed, m, int(table["tokens"][c])])
            mine: dict[str, list[float]] = {"rank": [], "lognormal": []}
            for _ in range(args.draws):
                idx = rng.choice(n, size=m, replace=False)
                p = np.exp(col[idx])
                g = math.log(forecast_worst(fit_gumbel_tail(p, args.top, "rank"), n)) - pmax[c]
                ln = math.log(forecast_worst_lognormal(fit_lognormal(p), n)) - pmax[c]
                errs["rank"].append(g)
                errs["expected"].append(math.log(forecast_worst(fit_gumbel_tail(p, args.top, "expected"), n))
                                        - pmax[c])
                errs["lognormal"].append(ln)
                errs["empirical"].append(float(col[idx].max()) - pmax[c])
                mine["rank"].append(abs(g))
                mine["lognormal"].append(abs(ln))
            per.setdefault(int(table["tokens"][c]), []).append(
                f"m={m}: {np.mean(mine['rank']):.2f} / {np.mean(mine['lognormal']):.2f}")
        e = {k: np.array(v) for k, v in errs.items()}
        w10 = {k: float((np.abs(v) <= math.log(10)).mean()) for k, v in e.items()}
        mae = {k: float(np.abs(v).mean()) for k, v in e.items()}
        print(f"| {m} | {n / m:.0f}x | {w10['rank']:.0%} | {mae['rank']:.2f} | {float(np.median(e['rank'])):+.2f} | "
              f"{w10['expected']:.0%} | {mae['expected']:.2f} | {w10['lognormal']:.0%} | {mae['lognormal']:.2f} | "
              f"{w10['empirical']:.0%} | {mae['empirical']:.2f} | {PAPER['gumbel_within10']:.0%} / "
              f"{PAPER['gumbel_abs_ln']} | - / {PAPER['lognormal_abs_ln']} |")
    print("\nPer behaviour, mean abs ln error, Gumbel (rank) / log-normal:")
    for tok, parts in per.items():
        print(f"  token {tok} (pool max {math.exp(pmax[list(table['tokens']).index(tok)]):.1e}): " + "; ".join(parts))


def partial_record(folder: Path, target: Any) -> dict[str, Any]:
    """The product distributions' rows of a reference record still being built, from the marginals the build has
    cached in ``folder`` (content-hashed; their key checked against the distribution rebuilt from rare.yaml), picked
    as ``tasks.rare.reference.build_reference`` picks them (declared token behaviours excluded)."""
    from tasks.paths import sha256_file
    from tasks.rare.exact import pick_tokens
    from tasks.rare.reference import make_distribution
    from tasks.rare.spec import read_spec

    spec = read_spec(REPO / "rare.yaml")
    declared = {b["token"] for b in spec.behaviours if "token" in b}
    ref = spec.reference
    rec: dict[str, Any] = {"spec": spec.canonical(), "target": target.identity.to_dict(), "distributions": {},
                           "rows": [], "commitment": None, "seconds": {}}
    for decl in spec.distributions:
        if decl["kind"] != "product":
            continue
        d = make_distribution(decl, target, spec.corpus)
        for meta in folder.glob(f"marginals-{d.id}-*.json"):
            info = json.loads(meta.read_text())
            npz = folder / info["file"]
            if info.get("key") != d.sha256()[:16] or sha256_file(npz) != info["sha256"]:
                continue
            with np.load(npz) as z:
                p1, p0 = z["p1"], z["p0"]
            rec["distributions"][d.id] = d.key()
            rec["seconds"][d.id] = info["seconds"]
            for tok in pick_tokens(p1, ref["tokens"], ref["low"], ref["high"], exclude=declared):
                for temp, p in ((1, p1), (0, p0)):
                    rec["rows"].append({"distribution": d.id, "token": tok, "temperature": temp,
                                        "p_exact": float(p[tok]), "declared": False})
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distributions", type=lambda s: s.split(","), default=None,
                    help="product distributions of the record (default: all)")
    ap.add_argument("--behaviours", type=int, default=16,
                    help="reference tokens per distribution, spread over the exact P range (default all 16)")
    ap.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024, 4096])
    ap.add_argument("--seeds", type=lambda s: list(range(int(s))), default=list(range(4)),
                    help="seeds per cell: 0 .. N-1 (default 4)")
    ap.add_argument("--estimators", type=lambda s: s.split(","), default=["naive", "itgis", "mhis"])
    ap.add_argument("--temperatures", type=lambda s: [int(x) for x in s.split(",")], default=[1, 0])
    ap.add_argument("--reference", type=Path, default=None, help="reference.json (default: the repo's, for rare.yaml)")
    ap.add_argument("--data", type=Path, default=REPO / ".logitpred" / "bench" / "rare")
    ap.add_argument("--greedy-behaviours", type=int, default=4,
                    help="per distribution, extra tokens run at temperature 0 only, picked by their exact greedy "
                    "probability (the reference set's tokens are picked at temperature 1; most have P = 0 greedy)")
    ap.add_argument("--greedy-low", type=float, default=1e-6)
    ap.add_argument("--greedy-high", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="append every grid row here as JSON lines")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-pool", action="store_true")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--ms", type=lambda s: [int(x) for x in s.split(",")], default=[30, 100, 300])
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--pool-prefix", default="The checksum is")
    ap.add_argument("--pool-tokens", default="hex")
    ap.add_argument("--pool-size", type=int, default=22)
    ap.add_argument("--pool-positions", type=int, default=3)
    ap.add_argument("--pool-behaviours", type=int, default=6)
    ap.add_argument("--pool-low", type=float, default=1e-5)
    ap.add_argument("--pool-high", type=float, default=1e-2)
    ap.add_argument("--pool-seed", type=int, default=0)
    ap.add_argument("--rows", type=Path, nargs="+", default=None,
                    help="report the grid from rows saved by --out (one or more files); runs nothing")
    args = ap.parse_args()
    if args.rows:
        return report_rows(args)
    from tasks.rare.estimators import REGISTRY

    unknown = [e for e in args.estimators if e not in REGISTRY]
    if unknown:
        sys.exit(f"unknown estimator(s) {unknown}: --estimators takes names of {sorted(REGISTRY)}")
    if "naive" in args.estimators:
        args.estimators = ["naive"] + [e for e in args.estimators if e != "naive"]
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", str(REPO / ".logitpred" / "models"))
    data = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    os.environ["LOGITPRED_HOME"] = str(data)
    os.environ["LOGITPRED_RESULTS"] = str(data / "results")
    link_caches(data)

    import torch

    from tasks import load_target
    from tasks.rare.spec import read_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    print(f"bench/rare.py on {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {load()}", flush=True)
    target = load_target()
    path = args.reference
    if path is None:
        spec = read_spec(REPO / "rare.yaml")
        path = REPO / ".logitpred" / "rare" / f"{spec.sha256()[:16]}-{target.identity.id}" / "reference.json"
    if path.is_file():
        rec = json.loads(path.read_text())
        body = {k: v for k, v in rec.items() if k not in ("commitment", "seconds")}
        ok = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() == rec["commitment"]
        print(f"reference {path.relative_to(REPO) if path.is_relative_to(REPO) else path}: commitment "
              f"{rec['commitment'][:16]} ({'verified' if ok else 'MISMATCH'}); build seconds per distribution "
              f"{rec.get('seconds')}", flush=True)
    elif list(path.parent.glob("marginals-*.json")):
        rec = partial_record(path.parent, target)
        print(f"reference {path} not built (yet): rows of {sorted(rec['distributions'])} reconstructed from the build's "
              "cached marginals with the build's own token pick (tasks.rare.exact.pick_tokens)", flush=True)
    elif args.no_grid:  # the pool needs only the corpus and the target
        rec = {"spec": {"corpus": read_spec(REPO / "rare.yaml").corpus}, "target": {"id": target.identity.id}}
    else:
        sys.exit(f"no reference record at {path}: run `logitpred rare build` first (several minutes)")
    if not args.no_grid:
        run_grid(args, target, rec, data)
    if not args.no_pool:
        run_pool(args, target, rec, data)
    print(f"\ntotal {time.time() - start:.0f} s, load average at the end {load()}")


if __name__ == "__main__":
    main()
