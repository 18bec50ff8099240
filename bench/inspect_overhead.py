"""Benchmark: scoring a suite split through inspect-ai vs the direct vectorized scorer, on the same predictions.

Both sides run the same registered predictor on the same prompts and score with the same metric code
(``evals.metrics.per_prompt_metrics``). Timed, side by side in one process:
- direct: ``predict_split`` (batches of 64) + ``validate`` + ``score_matrix`` (vectorized over all prompts);
- direct, one prompt at a time: the same predictor and metrics called per prompt, as the inspect scorer does;
- inspect: ``inspect_ai.eval(predictability(...), model="predictor/NAME")`` with full sample logs, then with
  ``log_samples=False, log_realtime=False``, then the same on one sample (the fixed cost of starting an eval).
Direct paths: best of 3 runs; inspect runs: one each (an eval is seconds). Prints the ratios to the direct path, inspect's fixed and per-sample costs, and checks that inspect's per-sample KL
equals the direct KL (same predictions). Uses the practice split so the holdout ledger is not touched.

    .venv/bin/python bench/inspect_overhead.py [--suite wiki] [--predictor unigram]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from inspect_ai import eval as inspect_eval

from evals.metrics import per_prompt_metrics
from evals.predictability import predictability
from evals.scoring import predict_split, score_matrix
from predictors import PredictorContext, create, densify, validate, view
from tasks import load_suite


def timed(fn, repeat: int = 1):
    """(result, best wall time of ``repeat`` runs): the best is the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_inspect(suite: str, split: str, model: str, log_dir: str, **kw):
    [log] = inspect_eval(predictability(suite=suite, split=split), model=model, log_dir=log_dir, display="none", **kw)
    assert log.status == "success", log.error
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="wiki")
    ap.add_argument("--predictor", default="unigram")
    args = ap.parse_args()
    split = "practice"
    suite = load_suite(args.suite)
    ctx = PredictorContext.from_suite(suite)
    ids, logp, nxt = suite.truth_split(split)
    n = len(ids)
    pred = create(args.predictor, ctx)

    def direct():
        preds = predict_split(suite, split, pred)
        checked = validate([(None, p) for p in preds], ids, suite.vocabulary, suite.background)
        return score_matrix(logp, checked.probs, nxt)

    direct(), pred.predict([view(suite.prompts(split)[0])])  # warm caches (suite files, predictor tables) for both
    table, t_direct = timed(direct, 3)

    def one_by_one():
        for i, p in enumerate(suite.prompts(split)):
            q = densify(pred.predict([view(p)])[0], suite.vocabulary, suite.background)
            per_prompt_metrics(logp[i : i + 1], q[None, :], nxt[i : i + 1])

    _, t_single = timed(one_by_one, 3)
    model = f"predictor/{args.predictor}"
    with tempfile.TemporaryDirectory() as tmp:
        run_inspect(args.suite, split, model, tmp, limit=1)  # first eval in a process imports more: not timed
        log, t_full = timed(lambda: run_inspect(args.suite, split, model, tmp))
        _, t_nolog = timed(lambda: run_inspect(args.suite, split, model, tmp, log_samples=False, log_realtime=False))
        _, t_one = timed(lambda: run_inspect(args.suite, split, model, tmp, limit=1, log_samples=False,
                                             log_realtime=False))
        got = np.array([s.scores["next_token_metrics"].value["kl_nats"] for s in
                        sorted(log.samples, key=lambda s: ids.index(s.id))])
    err = float(np.abs(got - table["kl_nats"].to_numpy()).max())
    per_sample = (t_nolog - t_one) / max(1, n - 1)
    print(f"suite {args.suite}/{split}: {n} prompts, predictor {args.predictor}; max |KL inspect - KL direct| = "
          f"{err:.2e} nats")
    print(f"{'path':<52}{'wall s':>8}{'x direct':>10}")
    for name, t in (("direct, vectorized (predict + validate + score)", t_direct),
                    ("direct, one prompt at a time", t_single),
                    ("inspect eval, sample logs", t_full),
                    ("inspect eval, --no-log-samples --no-log-realtime", t_nolog),
                    ("inspect eval, 1 sample (fixed cost)", t_one)):
        print(f"{name:<52}{t:>8.2f}{t / t_direct:>10.1f}")
    print(f"inspect per sample (no sample logs): {1000 * per_sample:.1f} ms, of which the predictor and metrics one "
          f"prompt at a time take {1000 * t_single / n:.1f} ms; fixed cost {t_one:.2f} s; sample logs add "
          f"{1000 * (t_full - t_nolog) / n:.1f} ms per sample")


if __name__ == "__main__":
    main()
