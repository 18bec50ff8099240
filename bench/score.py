"""Benchmark: scoring at leaderboard scale. Sparse (top + rest) and dense (full-vector) predictions through today's
path (``evals.sparse.score_rows``: sparse rows in O(named tokens) against cached truth constants, whole rows and the
bulk total-variation / Jensen-Shannon pass on the chunked float64 kernels of ``evals.metrics``), side by side with
*today's scorer* (a frozen copy, below, of the float64 numpy scorer this replaced: ``_Batch`` over 8-row chunks) and
a per-prompt scipy loop, at vocabulary sizes 49,152 and 256,000 (synthetic truth and predictions); validating the
same predictions from files (top+rest lines naming tokens, full-vector ``probs_b64`` lines, those as ``logitpred
score`` does: chunks through one reused buffer, on the sealed split each row also hashed for the holdout ledger)
beside those scoring rates; then end to end ``logitpred score`` on a 10,000-line file. Ratios come from one run (this machine's load moves all of them alike).

Every path computes the same 10 metrics (KL, reverse KL, JS, TV, Brier, top-1, top-10 overlap, cross-entropy of the
realized token for prediction and target, target entropy); the "8 decomposing metrics" line leaves out TV and JS, the
"float32 bulk" line computes those two in float32 (``tv_js_float32``).
Today's scorer and the scipy loop run on the first rows only (they are ~100x slower) and their rate is per row;
the new paths' outputs are compared with today's on those rows (max |difference| per metric; the scipy loop differs
by ~1e-7 because scipy renormalizes float32 truth, and its top-k ignores ties).

    .venv/bin/python bench/score.py [--n 4000] [--n-256k 800] [--e2e 10000] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.sparse import score_rows  # noqa: E402
from predictors.digest import SubmissionDigest, predictions_digest  # noqa: E402
from predictors.format import Prediction, check, densify  # noqa: E402
from predictors.jsonl import _parse_whole_line, iter_jsonl, raw_lines, validate_file  # noqa: E402
from predictors.rows import PredictionRows  # noqa: E402
from predictors.stream import FileStream  # noqa: E402
from tasks.truth_stats import chunk_rows, compute_stats, n_threads  # noqa: E402
from tasks.vocab import Vocabulary  # noqa: E402

COLS = ["kl_nats", "reverse_kl_nats", "js_bits", "tv", "brier", "top1", "top10_overlap", "ce_realized_nats",
        "target_ce_realized_nats", "target_entropy_nats"]
LN2 = float(np.log(2.0))


# --- today's scorer: a frozen copy of evals/metrics.py and evals/scoring.py as of ef044ec ---------------------------
def _topk_inclusion_today(x: np.ndarray, k: int) -> np.ndarray:
    kth = -np.partition(-x, k - 1, axis=1)[:, k - 1 : k]
    above, equal = x > kth, x == kth
    share = (k - above.sum(axis=1, keepdims=True)) / equal.sum(axis=1, keepdims=True)
    return np.where(above, 1.0, np.where(equal, share, 0.0))


def _metrics_today(t: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    t, q = t.astype(np.float64, copy=False), q.astype(np.float64, copy=False)
    p, log_q = np.exp(t), np.log(q)
    zero = p == 0
    t0 = np.where(zero, 0.0, t) if zero.any() else t
    log_m = np.log(0.5 * (p + q))
    d = q - p
    rows = np.arange(len(q))
    return {
        "kl_nats": (p * (t0 - log_q)).sum(axis=1),
        "reverse_kl_nats": (q * (log_q - t)).sum(axis=1),
        "js_bits": np.clip(0.5 * ((p * (t0 - log_m)).sum(axis=1) + (q * (log_q - log_m)).sum(axis=1)) / LN2, 0, 1),
        "tv": 0.5 * np.abs(d).sum(axis=1),
        "brier": (d * d).sum(axis=1),
        "top1": (_topk_inclusion_today(t, 1) * _topk_inclusion_today(q, 1)).sum(axis=1),
        "top10_overlap": (_topk_inclusion_today(t, k) * _topk_inclusion_today(q, k)).sum(axis=1) / k,
        "ce_realized_nats": -np.log(q[rows, ids]),
        "target_ce_realized_nats": -t[rows, ids],
        "target_entropy_nats": -(p * t0).sum(axis=1),
    }


def score_today(t: np.ndarray, q: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Today's ``score_matrix``: 8-row chunks of the float64 numpy metrics."""
    parts = [_metrics_today(t[i : i + 8], q[i : i + 8], ids[i : i + 8]) for i in range(0, len(q), 8)]
    return {c: np.concatenate([p[c] for p in parts]) for c in COLS}


def scipy_loop(t: np.ndarray, q: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    out = []
    for tr, qr, x in zip(t, q, ids, strict=True):
        p = np.exp(tr.astype(np.float64))
        top_p, top_q = set(np.argpartition(-p, 9)[:10]), set(np.argpartition(-qr, 9)[:10])
        out.append([entropy(p, qr), entropy(qr, p), jensenshannon(p, qr, base=2) ** 2, 0.5 * np.abs(p - qr).sum(),
                    ((qr - p) ** 2).sum(), float(np.argmax(p) == np.argmax(qr)), len(top_p & top_q) / 10,
                    -np.log(qr[x]), -float(tr[x]), entropy(p)])
    a = np.array(out)
    return {c: a[:, j] for j, c in enumerate(COLS)}


# --- synthetic data ---------------------------------------------------------------------------------------------
def synthetic_truth(n: int, V: int, rng: np.random.Generator, distinct: int = 512) -> np.ndarray:
    """float32 log-probabilities, log_softmax of 2.5 N(0, 1) logits (``distinct`` rows, repeated)."""
    out = np.empty((n, V), dtype=np.float32)
    for i in range(0, min(n, distinct), 64):
        z = rng.standard_normal((min(64, distinct - i, n - i), V)).astype(np.float32) * 2.5
        z -= z.max(axis=1, keepdims=True)
        out[i : i + len(z)] = z - np.log(np.exp(z.astype(np.float64)).sum(axis=1, keepdims=True))
    for i in range(distinct, n, distinct):
        out[i : i + distinct] = out[: min(distinct, n - i)]
    return out


def sparse_predictions(logp: np.ndarray, rng: np.random.Generator) -> list[Prediction]:
    """Top + rest predictions: 1-20 named tokens (half of the rows name the target's top token), named mass 0.3-0.95,
    rest uniform and unigram alternately; every 50th row names mass 1 (the 1e-6 floor), every 50th+1 nothing."""
    n, V = logp.shape
    preds = []
    for i in range(n):
        m = int(rng.integers(1, 21))
        ids = rng.choice(V, m, replace=False)
        if i % 2:
            ids[0] = int(np.argmax(logp[i]))
            ids = np.unique(ids)
        mass = 1.0 if i % 50 == 0 else float(rng.uniform(0.3, 0.95))
        ps = rng.dirichlet(np.ones(len(ids))) * mass
        top = [] if i % 50 == 1 else [[int(t), float(p)] for t, p in zip(ids, ps, strict=True)]
        preds.append(Prediction(f"p{i}", top, rest="unigram" if (i // 2) % 2 else "uniform"))
    return preds


def dense_predictions(n: int, V: int, rng: np.random.Generator) -> np.ndarray:
    q = np.empty((n, V))
    for i in range(n):
        z = rng.standard_normal(V) * 2.5
        q[i] = np.exp(z - z.max())
        q[i] /= q[i].sum()
    return q


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n: int) -> str:
    parts = []
    for c in COLS:
        x, y = np.asarray(a[c][:n], dtype=np.float64), np.asarray(b[c][:n], dtype=np.float64)
        same_inf = np.isinf(x) & (x == y)
        d = np.where(same_inf, 0.0, np.abs(x - y))
        parts.append(f"{c} {d.max():.1e}")
    return ", ".join(parts)


# --- one vocabulary size ------------------------------------------------------------------------------------------
def bench_vocab(V: int, n: int, n_dense: int, n_ref: int, vocab: Vocabulary | None, rng: np.random.Generator) -> None:
    print(f"\n== vocabulary {V:,}: {n:,} sparse and {n_dense:,} full-vector predictions; today's scorer and the scipy "
          f"loop on the first {n_ref} of each ==")
    logp = synthetic_truth(n, V, rng)
    nxt = rng.integers(0, V, size=n)
    bg = rng.dirichlet(np.full(V, 0.5))
    bg = (bg + 1e-7) / (bg + 1e-7).sum()
    stats, t_stats = timed(compute_stats, logp, bg)
    print(f"truth constants (once per suite split, cached beside the truth): {n / t_stats:,.0f} prompts/s")
    names = vocab if vocab is not None and len(vocab) == V else Vocabulary([f"t{i}" for i in range(V)],
                                                                             [f"t{i}" for i in range(V)])
    preds = sparse_predictions(logp, rng)
    rows = PredictionRows.from_rows([check(p, names, bg) for p in preds], V, bg)
    ref_q = rows.dense(0, n_ref)
    today, t_today = timed(score_today, logp[:n_ref], ref_q, nxt[:n_ref])
    loop, t_loop = timed(scipy_loop, logp[:n_ref], ref_q, nxt[:n_ref])
    r_today, r_loop = n_ref / t_today, n_ref / t_loop
    print(f"today's scorer (frozen float64 numpy, 8-row chunks): {r_today:,.0f} predictions/s")
    print(f"per-prompt scipy loop: {r_loop:,.0f} predictions/s")
    score_rows(rows.take(np.arange(min(64, n))), logp, nxt, stats)  # warm up threads and buffers
    dec, t_dec = timed(score_rows, rows, logp, nxt, stats, tv_js=False)
    full, t_full = timed(score_rows, rows, logp, nxt, stats)
    fast, t_fast = timed(score_rows, rows, logp, nxt, stats, tv_js_float32=True)
    for label, t in (("sparse (top+rest), the 8 decomposing metrics", t_dec),
                     ("sparse (top+rest), all 10 (TV, JS exact, dense in bulk: logitpred score)", t_full),
                     ("sparse (top+rest), all 10 (TV, JS in float32 bulk)", t_fast)):
        rate = n / t
        print(f"{label}: {rate:,.0f} predictions/s, {rate / r_today:.1f}x today's scorer, {rate / r_loop:.1f}x the "
              "scipy loop")
    print(f"  max |sparse - today's| on {n_ref} rows: {max_diff(full, today, n_ref)}")
    print(f"  with the float32 bulk: js_bits {np.abs(fast['js_bits'][:n_ref] - today['js_bits']).max():.1e}, tv "
          f"{np.abs(fast['tv'][:n_ref] - today['tv']).max():.1e}")
    tracemalloc.start()
    sub = rows.take(np.arange(min(n, 400)))
    score_rows(sub, logp, nxt, stats)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    chunk = n_threads() * 4 * chunk_rows(V) * V * 8
    print(f"  memory while scoring 400 sparse rows: peak {peak / 2**20:.1f} MiB over the inputs (chunk buffers: "
          f"{n_threads()} threads x 4 x {chunk_rows(V)} rows x {V:,} float64 = {chunk / 2**20:.1f} MiB)")
    del rows, full, dec, fast
    q = dense_predictions(n_dense, V, rng)
    dense_rows = PredictionRows.from_dense(q)
    n_ref = min(n_ref, n_dense)
    today_d, t_today_d = timed(score_today, logp[:n_ref], q[:n_ref], nxt[:n_ref])
    loop_d, t_loop_d = timed(scipy_loop, logp[:n_ref], q[:n_ref], nxt[:n_ref])
    got_d, t_d = timed(score_rows, dense_rows, logp[:n_dense], nxt[:n_dense], stats.take(np.arange(n_dense)))
    rate, rt, rl = n_dense / t_d, n_ref / t_today_d, n_ref / t_loop_d
    print(f"dense (full vectors), all 10 metrics: {rate:,.0f} predictions/s, {rate / rt:.1f}x today's scorer "
          f"({rt:,.0f}/s), {rate / rl:.1f}x the scipy loop ({rl:,.0f}/s)")
    print(f"  max |dense - today's| on {n_ref} rows: {max_diff(got_d, today_d, n_ref)}")
    print(f"  max |dense - scipy loop|: {max_diff(got_d, loop_d, n_ref)}")
    truth = (logp[:n_dense], nxt[:n_dense], stats.take(np.arange(n_dense)))
    bench_validation(V, names, bg, preds, q, {"sparse": (n / t_dec, n / t_full), "dense": rate}, truth)


def bench_validation(V: int, vocab: Vocabulary, bg: np.ndarray, preds: list[Prediction], q: np.ndarray,
                     scoring: dict[str, Any], truth: tuple[np.ndarray, np.ndarray, Any]) -> None:
    """Validation of the predictions just scored, written to files (read, parse, token lookup, checks), beside the
    scoring rates of this run. Full-vector lines: as ``logitpred score`` validates them (``predictors.stream``: whole
    rows checked into one reused buffer, chunk by chunk), and, for comparison, keeping every row
    (``validate_file``: float32 as given, in new memory); parsed alone, by the shortcut
    (``predictors.jsonl._parse_full_vector``) and by the JSON parser over the whole line; validated and scored as one
    stream (``evals.stream_scoring``) against validating the whole file, then scoring its rows. Then the sealed split
    as ``logitpred score`` does it: the same stream with every row also hashed for the holdout ledger
    (``predictors.digest.SubmissionDigest``, on the chunk workers), against validating the whole file, scoring it and
    digesting the kept rows; top+rest lines with their digest (named rows hashed as named)."""
    ids = [p.prompt_id for p in preds]
    with tempfile.TemporaryDirectory() as tmp:
        sparse, dense = Path(tmp) / "sparse.jsonl", Path(tmp) / "dense.jsonl"
        named = [i for i in range(V) if vocab.lookup(vocab.text[i]) == i]
        with open(sparse, "w", encoding="utf-8") as f:  # candidates by name: token lookup included
            for p in preds:
                top = {vocab.text[named[int(t) % len(named)]]: float(pr) for t, pr in p.top}
                f.write(json.dumps({"prompt_id": p.prompt_id, "top": top, "rest": p.rest}, ensure_ascii=False) + "\n")
        with open(dense, "w") as f:
            for i, row in enumerate(q):
                data = base64.b64encode(row.astype("<f4").tobytes()).decode()
                f.write(json.dumps({"prompt_id": ids[i], "probs_b64": data}) + "\n")
        out, t_s = timed(validate_file, sparse, ids, vocab, bg)
        assert not out.errors, out.errors[:3]
        _, t_s_hash = timed(out.digest)  # sealed: named rows hashed as named, O(named tokens)
        del out
        n, dense_ids = len(q), ids[: len(q)]

        def stream(score: bool = False, sealed: bool = False) -> int:
            s = FileStream(dense, dense_ids, vocab, bg)
            digest = SubmissionDigest(dense_ids) if sealed else None
            for chunk in s:
                if score:
                    score_rows(PredictionRows.from_dense(chunk.probs), truth[0], truth[1], truth[2],
                               truth_rows=chunk.positions)
                if digest is not None:
                    digest.add(chunk.positions, chunk.probs)
            rest = s.rest()
            assert not rest.errors and len(rest.prompt_ids) == n and not rest.sparse.prompt_ids, rest.errors[:3]
            if digest is not None:
                digests.append(digest.hexdigest(rest.prompt_ids))
            return len(s.buffer)

        digests: list[str] = []

        cpu = time.process_time()
        chunk, t_stream = timed(stream)
        cpu_stream = time.process_time() - cpu
        cpu = time.process_time()
        out_d, t_d = timed(validate_file, dense, dense_ids, vocab, bg)
        cpu_keep = time.process_time() - cpu
        kept = sum(b.nbytes for b in getattr(out_d.rows.full, "blocks", [out_d.rows.full]))
        assert not out_d.errors and out_d.rows.is_full.all(), out_d.errors[:3]
        for (k, data), i in zip(raw_lines(dense), range(20), strict=False):  # the shortcut's rows: the parser's
            assert np.array_equal(out_d.rows.row(i).full, densify(_parse_whole_line(k, data), vocab, bg))
        _, t_kept = timed(score_rows, out_d.rows, *truth)
        kept_digest, t_kept_hash = timed(predictions_digest, dense_ids, out_d.rows)
        del out_d
        _, t_parse = timed(lambda: sum(1 for _ in iter_jsonl(dense)))
        _, t_whole = timed(lambda: sum(_parse_whole_line(k, b) is not None for k, b in raw_lines(dense)))
        _, t_both = timed(stream, True)
        cpu = time.process_time()
        _, t_sealed = timed(stream, False, True)
        cpu_sealed = time.process_time() - cpu
        _, t_sealed_both = timed(stream, True, True)
        assert digests == [kept_digest] * 2  # the stream's digest is the kept rows' (the ledger's identity)
    r_sparse, (r_dec, r_all), r_dense = len(preds) / t_s, scoring["sparse"], scoring["dense"]
    r_stream, r_keep = n / t_stream, n / t_d
    print("validation beside scoring (the predictions above, from a file: read, parse, token lookup, checks; one "
          "thread):")
    print(f"  top+rest lines (tokens by name): validate {r_sparse:,.0f} lines/s | score {r_dec:,.0f}/s (8 "
          f"decomposing), {r_all:,.0f}/s (all 10): validation {r_sparse / r_all:.1f}x scoring; sealed, with the "
          f"ledger digest: {len(preds) / (t_s + t_s_hash):,.0f} lines/s, {len(preds) / (t_s + t_s_hash) / r_all:.1f}x")
    print(f"  full-vector lines (probs_b64), {n:,} lines: validate as `logitpred score` does (chunks of {chunk} rows "
          f"through one reused buffer) {r_stream:,.0f} lines/s ({cpu_stream / n * 1e3:.2f} ms CPU a line) | score "
          f"{r_dense:,.0f}/s: validation {r_stream / r_dense:.1f}x scoring")
    print(f"    keeping every row instead (validate_file: {kept / 2**20:,.0f} MiB of new memory, float32 as given): "
          f"{r_keep:,.0f} lines/s ({cpu_keep / n * 1e3:.2f} ms CPU a line), {r_keep / r_dense:.1f}x scoring; its rows "
          f"scored {n / t_kept:,.0f}/s")
    print(f"    parsing alone {n / t_parse:,.0f} lines/s (the JSON parser over the whole line: {n / t_whole:,.0f} "
          f"lines/s); validate + score as one stream {n / t_both:,.0f} lines/s, validate_file then score "
          f"{n / (t_d + t_kept):,.0f} lines/s")
    print(f"    sealed split (every row also hashed for the holdout ledger: predictors/digest.py): validate + hash as "
          f"`logitpred score` does {n / t_sealed:,.0f} lines/s ({cpu_sealed / n * 1e3:.2f} ms CPU a line), "
          f"{n / t_sealed / r_dense:.1f}x scoring; validate + score + hash as one stream {n / t_sealed_both:,.0f} "
          f"lines/s, validate_file then score then digest {n / (t_d + t_kept + t_kept_hash):,.0f} lines/s (the "
          f"digest alone {n / t_kept_hash:,.0f} rows/s)")


# --- end to end ---------------------------------------------------------------------------------------------------
def build_suite(home: Path, n: int, vocab: Vocabulary, bg: np.ndarray, rng: np.random.Generator) -> Path:
    """A synthetic suite of ``n`` practice prompts (and 8 sealed) with synthetic truth, under ``home``."""
    from tasks.suite import FORMAT
    from tasks.truth import write_truth

    V = len(vocab)
    folder = home / "suites" / "bench-e2e"
    folder.mkdir(parents=True)
    target = {"name": "synthetic", "weights_sha256": "0" * 64, "tokenizer_sha256": "0" * 64, "id": "0" * 16}
    prompts = {}
    for split, size in (("practice", n), ("sealed", 8)):
        rows = [{"id": f"{split[0]}{i:06d}", "doc": f"d{split}{i}", "text": f"prompt {i}", "token_ids": [1, 2, 3],
                 "next_token_id": int(rng.integers(0, V)), "source": "bench", "start": 0, "cut": 3}
                for i in range(size)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        prompts[split] = rows
    vocab.save(folder / "vocab.json")
    np.save(folder / "background.npy", bg)
    manifest = {"format": FORMAT, "name": "bench-e2e", "version": "2-bench0000000", "target": target,
                "config": {"name": "bench-e2e", "corpus": "synthetic", "seed": 0, "heldout_fraction": 0.1,
                           "practice": n, "sealed": 8},
                "vocab_size": V, "bos_ids": [], "sizes": {"practice": n, "sealed": 8}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    truth_dir = home / "truth" / "bench-e2e" / f"{manifest['version']}-{target['id']}"
    arrays = {s: (synthetic_truth(len(rows), V, rng), np.array([r["next_token_id"] for r in rows], dtype=np.int64))
              for s, rows in prompts.items()}
    write_truth(truth_dir, arrays, {"suite": "bench-e2e", "version": manifest["version"], "target": target,
                                    "placement": {"device": "cpu", "dtype": "float32"}},
                (folder / "sealed.jsonl").read_bytes(), {s: [r["id"] for r in rows] for s, rows in prompts.items()})
    return folder


def bench_e2e(n: int, vocab: Vocabulary, bg: np.ndarray, rng: np.random.Generator, n_today: int) -> None:
    from evals.scoring import score_validated
    from evals.stats import summarize
    from tasks.suite import load_suite
    from tasks.truth_stats import truth_stats

    print(f"\n== end to end: `logitpred score` on a {n:,}-line top+rest file (vocabulary {len(vocab):,}, synthetic "
          f"{n:,}-prompt suite) ==")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "LOGITPRED_HOME": str(home), "LOGITPRED_RESULTS": str(home / "results")}
        os.environ.update({"LOGITPRED_HOME": env["LOGITPRED_HOME"], "LOGITPRED_RESULTS": env["LOGITPRED_RESULTS"]})
        folder = build_suite(home, n, vocab, bg, rng)
        suite = load_suite(folder)
        ids = [p.id for p in suite.prompts("practice")]
        _, logp, _ = suite.truth_split("practice")
        preds = sparse_predictions(logp[:512], rng)
        named = [i for i in range(len(vocab)) if vocab.lookup(vocab.text[i]) == i]
        path = home / "preds.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i, pid in enumerate(ids):
                p = preds[i % len(preds)]
                top = {vocab.text[named[int(t) % len(named)]]: float(pr) for t, pr in p.top}
                f.write(json.dumps({"prompt_id": pid, "top": top, "rest": p.rest}, ensure_ascii=False) + "\n")
        cmd = [sys.executable, "-c", "from evals.cli import app; app()", "score", str(path), "-s", str(folder),
               "--split", "practice"]
        walls = []
        for _ in range(2):  # cold (computes and caches the truth constants), then warm
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(Path(__file__).parent.parent))
            walls.append(time.perf_counter() - t0)
            if res.returncode != 0:
                print(res.stdout[-2000:], res.stderr[-2000:])
                raise SystemExit("logitpred score failed")
        print(f"logitpred score, whole command: {walls[0]:.1f} s the first time (truth constants computed and cached), "
              f"{walls[1]:.1f} s again ({n / walls[1]:,.0f} lines/s)")
        _, t_load = timed(load_suite(folder).truth_split, "practice")  # a fresh Suite: read, hash and check the truth
        checked, t_val = timed(validate_file, path, ids, suite.vocabulary, suite.background)
        _, t_stats = timed(truth_stats, suite, "practice")
        table, t_score = timed(score_validated, suite, "practice", checked)
        _, t_sum = timed(summarize, {c: table[c].to_numpy() for c in table.columns})
        print(f"  in process: truth load {t_load:.2f} s (tasks/truth.py: file sha256, NaN/+inf check), validate "
              f"{t_val:.2f} s ({n / t_val:,.0f} lines/s), truth constants from the cache {t_stats:.2f} s, score "
              f"{t_score:.2f} s ({n / t_score:,.0f}/s), bootstrap CIs {t_sum:.2f} s (evals/stats.py: 2,000 resamples "
              "x 5 statistics x 12 columns)")
        sub_ids = ids[:n_today]
        head = home / "head.jsonl"
        with open(path, encoding="utf-8") as f, open(head, "w", encoding="utf-8") as g:
            for _, line in zip(range(n_today), f, strict=False):
                g.write(line)
        _, logp_all, nxt_all = suite.truth_split("practice")
        t0 = time.perf_counter()
        old = validate_file(head, sub_ids, suite.vocabulary, suite.background)
        q = old.probs  # today's validation kept every row as a float64 vector
        t_old_val = time.perf_counter() - t0
        _, t_old_score = timed(score_today, logp_all[:n_today], q, nxt_all[:n_today])
        new_rate = n / (t_val + t_score)
        old_rate = n_today / (t_old_val + t_old_score)
        print(f"  validate + score, today's path (densify every row, frozen scorer; first {n_today:,} lines): "
              f"{old_rate:,.0f} lines/s; now: {new_rate:,.0f} lines/s, {new_rate / old_rate:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="sparse predictions at 49,152 tokens")
    ap.add_argument("--n-256k", type=int, default=800, help="sparse predictions at 256,000 tokens")
    ap.add_argument("--e2e", type=int, default=10000, help="lines of the end-to-end file (0: skip)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_256k, args.e2e = 400, 100, 1000
    rng = np.random.default_rng(0)
    vocab = None
    try:
        from tasks.suite import load_suite

        wiki = load_suite("wiki")
        vocab, wiki_bg = wiki.vocabulary, wiki.background
    except Exception:  # no built suite: a synthetic vocabulary of names t0, t1, ...
        wiki_bg = None
    print(f"bench/score.py: {n_threads()} threads, numpy {np.__version__}; synthetic truth: log_softmax of 2.5 N(0, 1) "
          "logits, float32")
    bench_vocab(49152, args.n, max(1, args.n // 4), min(400, args.n), vocab, rng)
    bench_vocab(256000, args.n_256k, max(1, args.n_256k // 4), min(80, args.n_256k), None, rng)
    if args.e2e:
        if vocab is None:
            vocab = Vocabulary([f"t{i}" for i in range(49152)], [f"t{i}" for i in range(49152)])
            wiki_bg = np.full(49152, 1 / 49152)
        bench_e2e(args.e2e, vocab, wiki_bg, rng, min(1000, args.e2e))


if __name__ == "__main__":
    main()
