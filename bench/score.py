"""Benchmark: the harness's vectorized scoring vs a per-prompt scipy loop computing the same metrics.

Both sides compute, for the same N random distributions over the target's vocabulary size (49,152): KL(p||q) and
KL(q||p) (scipy.stats.entropy), Jensen-Shannon base 2 (scipy jensenshannon, squared), total variation, Brier, top-1,
top-10 overlap, cross-entropy of a realized token for prediction and target, and the target's entropy. The vectorized
side is ``evals.scoring.score_matrix`` (what ``logitpred score`` runs). Prints the ratio (loop / vectorized) and the
largest disagreement. Distributions are generated in chunks of 256, outside the timed sections, to bound memory.

    .venv/bin/python bench/score.py [--n 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax
from scipy.stats import entropy

from evals.scoring import score_matrix

V, GEN = 49152, 256


def chunks(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(0, n, GEN):
        k = min(GEN, n - i)
        truth = log_softmax(rng.standard_normal((k, V)) * 2.5, axis=1).astype(np.float32)
        pred = np.exp(log_softmax(rng.standard_normal((k, V)) * 2.5, axis=1))
        yield truth, pred, rng.integers(0, V, size=k)


def loop_metrics(t: np.ndarray, q: np.ndarray, x: int) -> list[float]:
    p = np.exp(t.astype(np.float64))
    top_p, top_q = set(np.argpartition(-p, 9)[:10]), set(np.argpartition(-q, 9)[:10])
    return [entropy(p, q), entropy(q, p), jensenshannon(p, q, base=2) ** 2, 0.5 * np.abs(p - q).sum(),
            ((q - p) ** 2).sum(), float(np.argmax(p) == np.argmax(q)), len(top_p & top_q) / 10, -np.log(q[x]),
            -float(t[x]), entropy(p)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    n = ap.parse_args().n
    t_vec = t_loop = 0.0
    vec, loop = [], []
    cols = ["kl_nats", "reverse_kl_nats", "js_bits", "tv", "brier", "top1", "top10_overlap", "ce_realized_nats",
            "target_ce_realized_nats", "target_entropy_nats"]
    for truth, pred, nxt in chunks(n):
        t0 = time.perf_counter()
        df = score_matrix(truth, pred, nxt)
        t_vec += time.perf_counter() - t0
        vec.append(df[cols].to_numpy())
        t0 = time.perf_counter()
        loop.extend(loop_metrics(t, q, x) for t, q, x in zip(truth, pred, nxt, strict=True))
        t_loop += time.perf_counter() - t0
    diff = np.abs(np.concatenate(vec) - np.array(loop)).max(axis=0)
    print(f"{n} predictions over a {V}-token vocabulary, {len(cols)} metrics each")
    print(f"vectorized (score_matrix): {t_vec:.2f} s ({n / t_vec:.0f} predictions/s)")
    print(f"per-prompt scipy loop:     {t_loop:.2f} s ({n / t_loop:.0f} predictions/s)")
    print(f"speed-up ratio (loop / vectorized): {t_loop / t_vec:.2f}x")
    print("max |difference| per metric: " + ", ".join(f"{c} {d:.1e}" for c, d in zip(cols, diff, strict=True)))


if __name__ == "__main__":
    main()
