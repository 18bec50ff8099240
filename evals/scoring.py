"""Scoring: validated predictions against the suite's truth, into per-prompt metrics, aggregates and a run record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictors.base import Predictor, view
from predictors.jsonl import validate, validate_file
from predictors.rows import ValidatedPredictions
from tasks.paths import sha256_file
from tasks.suite import Suite

from . import records
from .metrics import per_prompt_metrics
from .sparse import score_rows
from .stats import summarize

K = 10  # top-k overlap's k


class ScoringError(ValueError):
    """Predictions could not be scored (nothing valid, or strict mode with rejected lines)."""


@dataclass
class Score:
    per_prompt: pd.DataFrame  # one row per scored prompt
    summary: dict[str, Any]  # the run record (metrics with CIs and provenance)
    errors: list[str]
    run_dir: Path | None = None


def score_matrix(truth_logp: np.ndarray, pred_p: np.ndarray, next_ids: np.ndarray, *, k: int = K) -> pd.DataFrame:
    """Per-prompt metrics for aligned dense arrays (``evals.metrics.per_prompt_metrics``: chunked, multi-threaded)."""
    return pd.DataFrame(per_prompt_metrics(truth_logp, pred_p, next_ids, k=k))


def score_validated(suite: Suite, split: str, preds: ValidatedPredictions, *, k: int = K,
                    tv_js: bool = True) -> pd.DataFrame:
    """Per-prompt metrics of validated predictions of ``split``, in their order: sparse rows in O(named tokens)
    against the split's cached truth constants (``tasks.truth_stats``), whole rows on the dense kernels
    (``evals.sparse.score_rows``). ``tv_js=False`` leaves out total variation and Jensen-Shannon."""
    from tasks.truth_stats import truth_stats

    ids, logp, nxt = suite.truth_split(split)
    where = {p: i for i, p in enumerate(ids)}
    rows = np.array([where[p] for p in preds.prompt_ids], dtype=np.int64)
    bg = preds.rows.background
    if bg is not None and bg is not suite.background and not np.array_equal(bg, suite.background):
        raise ScoringError("these predictions were validated against another background unigram than the suite's")
    stats = truth_stats(suite, split, ks=sorted({1, k, K}))
    return pd.DataFrame(score_rows(preds.rows, logp, nxt, stats, truth_rows=rows, k=k, tv_js=tv_js))


def load_file(path: Path, suite: Suite, split: str) -> ValidatedPredictions:
    """Read and validate a predictions file against a suite split (bad lines reported, good ones kept).

    The file is streamed (``predictors.jsonl.validate_file``): memory is the accepted rows, not the file's lines.
    To score a file without holding its whole rows, see ``evals.stream_scoring.score_file``.
    """
    if not path.is_file():
        raise ScoringError(f"predictions file {path} does not exist")
    return validate_file(path, [p.id for p in suite.prompts(split)], suite.vocabulary, suite.background)


def score(suite: Suite, split: str, preds: ValidatedPredictions, *, predictor: dict[str, Any], strict: bool = False,
          seed: int = 0, source: Path | None = None, write: bool = True, results_root: Path | None = None) -> Score:
    """Score validated predictions of ``split``; write ``results/<run-id>/`` unless ``write=False``.

    ``predictor`` is the metadata recorded with the result (``name``, ``options``, ``label``, approval fields). The
    approval marking follows the one rule (``predictors.approval``): for a registered predictor it is derived here,
    whatever the caller claims, so a Python caller scoring an unapproved helper's predictions gets them marked
    unapproved; other names (files, humans, a gate's team) keep their metadata, or are level-0 files without it.
    """
    predictor = with_approval(predictor)
    refuse(preds.prompt_ids, preds.errors, preds.missing, strict)
    if split == "sealed":
        suite.verify_commitment()
        from .holdout import check, default_limit

        check(suite, predictor.get("label") or predictor["name"], default_limit())  # holdout hygiene
    per_prompt = score_validated(suite, split, preds)
    return record(suite, split, per_prompt, preds, predictor=predictor, seed=seed, source=source, write=write,
                  results_root=results_root)


def refuse(accepted: Sequence[str], errors: Sequence[str], missing: Sequence[str], strict: bool) -> None:
    """Raise ``ScoringError`` when nothing may be scored: in strict mode with any rejected line or missing prompt,
    or with no accepted prediction."""
    if strict and (errors or missing):
        raise ScoringError(f"strict mode: {len(errors)} rejected line(s), {len(missing)} prompt(s) "
                           "without a prediction; nothing scored")
    if not accepted:
        raise ScoringError("no valid prediction to score" + (f": {errors[0]}" if errors else ""))


def record(suite: Suite, split: str, per_prompt: pd.DataFrame, preds: Any, *, predictor: dict[str, Any], seed: int,
           source: Path | None, write: bool, results_root: Path | None, digest: str | None = None) -> Score:
    """The run record of per-prompt metrics (rows in the order of ``preds.prompt_ids``, no id column yet): the id and
    context-length columns, the summary with CIs and provenance, the holdout count for ``sealed`` under ``digest``
    (``predictors.digest``; default ``preds.digest()``, so ``preds`` is a ``ValidatedPredictions`` unless the
    digest is given; otherwise anything with ``prompt_ids``, ``errors``, ``missing``); written under
    ``results/<run-id>/`` when ``write``."""
    ids = suite.truth_split(split)[0]
    prompts = {p.id: p for p in suite.prompts(split)}
    per_prompt.insert(0, "prompt_id", preds.prompt_ids)
    per_prompt.insert(1, "context_tokens", [len(prompts[p].token_ids) for p in preds.prompt_ids])
    per_prompt["p_realized"] = np.exp(-per_prompt["ce_realized_nats"])
    name = predictor["name"]
    summary = {
        "run_id": records.new_run_id(suite.name, split, name),
        "created": datetime.now(UTC).isoformat(),
        "command": records.command_line(),
        "suite": {"name": suite.name, "version": suite.version, "commitment": suite.commitment,
                  "sealed_prompts_sha256": suite.sealed_prompts_sha256,
                  "config": suite.manifest["config"]},
        "split": split,
        "target": suite.target,
        "predictor": predictor,
        "predictions_file": ({"path": str(source), "sha256": sha256_file(source)} if source else None),
        "n_prompts": len(ids),
        "n_scored": len(preds.prompt_ids),
        "n_rejected": len(preds.errors),
        "missing": preds.missing,
        "errors": preds.errors[:100],
        "seed": seed,
        "environment": records.environment(),
        "metrics": summarize({c: per_prompt[c].to_numpy() for c in per_prompt.columns
                              if c not in ("prompt_id", "context_tokens")}, seed=seed),
    }
    if split == "sealed":  # holdout hygiene: every sealed scoring is counted per predictor (evals/holdout.py)
        from .holdout import record as count

        digest = digest or preds.digest()  # "v2:" sha256 over per-row sha256s (predictors/digest.py)
        summary["holdout"] = {"submission": count(suite, predictor.get("label") or name, run_id=summary["run_id"],
                                                  digest=digest), "predictions_sha256": digest}
    run_dir = records.write_run(summary, per_prompt, root=results_root) if write else None
    return Score(per_prompt, summary, preds.errors, run_dir)


def with_approval(predictor: dict[str, Any]) -> dict[str, Any]:
    """``predictor`` metadata with the approval fields of the one rule (see ``score``)."""
    from predictors import available
    from predictors.approval import file_approval, require_approved

    name, options = predictor["name"], predictor.get("options") or {}
    if name in available():
        return {**predictor, **require_approved(name, options, allow_unapproved=True)}
    if "approved" in predictor:
        return predictor
    return {**predictor, **file_approval(None)}


def predict_split(suite: Suite, split: str, predictor: Predictor, *, batch_size: int = 64,
                  on_progress: Any = None) -> list:
    """Run a predictor over a split in batches; it sees only prompt views."""
    prompts: Sequence = [view(p) for p in suite.prompts(split)]
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        preds = predictor.predict(batch)
        if len(preds) != len(batch):
            raise ScoringError(f"predictor {predictor.name!r} returned {len(preds)} predictions for {len(batch)} prompts")
        out.extend(preds)
        if on_progress:
            on_progress(len(batch))
    return out


def predict_validated(suite: Suite, split: str, predictor: Predictor, *, on_progress: Any = None) -> ValidatedPredictions:
    """Run a predictor over a split and validate its predictions at the boundary, as a file would be."""
    preds = predict_split(suite, split, predictor, on_progress=on_progress)
    return validate([(None, x) for x in preds], [p.id for p in suite.prompts(split)], suite.vocabulary,
                    suite.background)
