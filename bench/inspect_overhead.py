"""Benchmark: what scoring through inspect-ai costs per sample, and how much of it is logitpred's.

One process, the practice split of a suite, one registered predictor:
- inspect's own machinery: the same task (``evals/predictability.py``) with a model provider that answers nothing at
  once (``benchnull/none``, below: the scorer then returns at once, no prediction), without sample logs;
- the same with ``--model predictor/NAME``: the difference is logitpred's share (provider + predictor + scorer);
- that share measured directly, one sample at a time: the predictor's own ``predict``, the provider's ``generate``
  around it (prompt lookup, top-10 summary, output), and the scorer's work (``check`` + ``score_rows`` against the
  cached truth constants), next to today's provider summary and scorer (densify + a frozen copy of the float64
  per-prompt metrics, as before this change);
- sample logs on, for scale.
Direct paths: best of 3 runs; inspect runs: one each (an eval is seconds). Checks that inspect's per-sample metrics
equal ``logitpred score``'s on the same predictions. Uses the practice split so the holdout ledger is not touched.

    .venv/bin/python bench/inspect_overhead.py [--suite wiki] [--predictor unigram]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from inspect_ai import eval as inspect_eval
from inspect_ai.model import (
    ChatMessageSystem,
    ChatMessageUser,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    modelapi,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.inspect_provider import PredictorAPI, summarize, system_message, take_prediction  # noqa: E402
from evals.predictability import predictability  # noqa: E402
from evals.scoring import predict_split, score_validated  # noqa: E402
from evals.sparse import score_rows  # noqa: E402
from predictors import PredictorContext, create, densify, validate, view  # noqa: E402
from predictors.format import check  # noqa: E402
from predictors.rows import PredictionRows  # noqa: E402
from tasks import load_suite  # noqa: E402
from tasks.truth_stats import truth_stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score import _metrics_today  # noqa: E402  (the frozen copy of today's float64 metrics)


class NullAPI(ModelAPI):
    """Answers every sample at once with an empty completion: inspect's machinery without any model."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args) -> None:
        super().__init__(model_name, base_url, api_key, api_key_vars=[], config=config)

    async def generate(self, input, tools, tool_choice, config) -> ModelOutput:
        return ModelOutput.from_content(model="benchnull/none", content="")


@modelapi(name="benchnull")
def null_api() -> type[ModelAPI]:
    return NullAPI


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


def summarize_today(pred, vocab, k: int = 10):
    """The provider's top-10 summary before this change: a stable argsort of the whole vector."""
    if pred.probs is not None:
        q = np.asarray(pred.probs, dtype=np.float64)
        return [[vocab.text[int(t)], round(float(q[t]), 6)] for t in np.argsort(-q, kind="stable")[:k]]
    return summarize(pred, vocab, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="wiki")
    ap.add_argument("--predictor", default="unigram")
    args = ap.parse_args()
    split = "practice"
    suite = load_suite(args.suite)
    ctx = PredictorContext.from_suite(suite)
    ids, logp, nxt = suite.truth_split(split)
    stats = truth_stats(suite, split)
    prompts = suite.prompts(split)
    n, V = len(ids), len(suite.vocabulary)
    pred = create(args.predictor, ctx)
    vocab, bg = suite.vocabulary, suite.background
    views = [view(p) for p in prompts]
    preds = [pred.predict([v])[0] for v in views]

    def direct():
        checked = validate([(None, p) for p in predict_split(suite, split, pred)], ids, vocab, bg)
        return score_validated(suite, split, checked)

    table, t_direct = timed(direct, 3)
    _, t_predict = timed(lambda: [pred.predict([v]) for v in views], 3)
    api = PredictorAPI(args.predictor)
    messages = [[ChatMessageSystem(content=system_message(suite.name)), ChatMessageUser(content=p.text)]
                for p in prompts]

    async def generate_all():
        for m in messages:
            out = await api.generate(m, [], "none", GenerateConfig())
            take_prediction(out.metadata["logitpred"]["handle"])

    asyncio.run(generate_all())  # builds the provider's suite view once: not timed
    _, t_generate = timed(lambda: asyncio.run(generate_all()), 3)

    def scorer_now():
        for i, p in enumerate(preds):
            row = PredictionRows.from_rows([check(p, vocab, bg)], V, bg)
            score_rows(row, logp, nxt, stats, truth_rows=np.array([i]))

    def scorer_today():
        for i, p in enumerate(preds):
            _metrics_today(logp[i : i + 1], densify(p, vocab, bg)[None], nxt[i : i + 1])

    _, t_score = timed(scorer_now, 3)
    _, t_score_today = timed(scorer_today, 3)
    _, t_sum = timed(lambda: [summarize(p, vocab) for p in preds], 3)
    _, t_sum_today = timed(lambda: [summarize_today(p, vocab) for p in preds], 3)
    model = f"predictor/{args.predictor}"
    quiet = {"log_samples": False, "log_realtime": False}
    with tempfile.TemporaryDirectory() as tmp:
        run_inspect(args.suite, split, model, tmp, limit=1)  # first eval in a process imports more: not timed
        run_inspect(args.suite, split, "benchnull/none", tmp, limit=1)
        _, t_null_one = timed(lambda: run_inspect(args.suite, split, "benchnull/none", tmp, limit=1, **quiet))
        _, t_null = timed(lambda: run_inspect(args.suite, split, "benchnull/none", tmp, **quiet))
        _, t_one = timed(lambda: run_inspect(args.suite, split, model, tmp, limit=1, **quiet))
        _, t_nolog = timed(lambda: run_inspect(args.suite, split, model, tmp, **quiet))
        log, t_full = timed(lambda: run_inspect(args.suite, split, model, tmp))
        got = {s.id: s.scores["next_token_metrics"].value for s in log.samples}
    err = max(abs(got[pid][c] - table[c][i]) for i, pid in enumerate(ids) for c in table.columns if c in got[pid]
              and np.isfinite(table[c][i]))
    ms = 1000 / n
    per_null = 1000 * (t_null - t_null_one) / (n - 1)  # per-sample slope: fixed costs cancel
    per_pred = 1000 * (t_nolog - t_one) / (n - 1)
    provider = (t_generate - t_predict) * ms
    print(f"suite {args.suite}/{split}: {n} prompts, predictor {args.predictor} ({V:,} tokens); max |inspect - "
          f"logitpred score| over every metric = {err:.1e}")
    print(f"{'path':<60}{'wall s':>8}{'ms/sample':>11}")
    for name, t, per in (("direct: predict + validate + score (logitpred score's path)", t_direct, t_direct * ms),
                         ("inspect eval, a model that answers nothing (inspect alone)", t_null, per_null),
                         (f"inspect eval, {model}, no sample logs", t_nolog, per_pred),
                         (f"inspect eval, {model}, sample logs", t_full, 1000 * (t_full - t_one) / (n - 1))):
        print(f"{name:<60}{t:>8.2f}{per:>11.2f}")
    print(f"(ms/sample of an eval: (time of {n} samples - time of 1) / {n - 1}; fixed cost of one eval: "
          f"{t_null_one:.2f} s alone, {t_one:.2f} s with the predictor's suite view)")
    print(f"logitpred's share per sample: {per_pred - per_null:.2f} ms ({model} minus the null model, no logs), of "
          f"which the predictor's own predict {t_predict * ms:.2f} ms")
    print(f"measured directly, per sample: provider around the predictor {provider:.2f} ms (top-10 summary "
          f"{t_sum * ms:.3f} ms, was {t_sum_today * ms:.3f} ms); scorer {t_score * ms:.2f} ms (was "
          f"{t_score_today * ms:.2f} ms: densify + float64 metrics); provider + scorer {provider + t_score * ms:.2f} ms")
    rest = per_pred - per_null - provider - t_score * ms - t_predict * ms
    print(f"the rest of the difference, {rest:.2f} ms, is inspect handling what a scored sample carries (events, deep "
          "copies of the state, validation of the output and of an 11-metric score)")


if __name__ == "__main__":
    main()
