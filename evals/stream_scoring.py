"""Scoring a predictions file as one stream: each chunk of whole vectors is scored as soon as validation fills it
(``predictors.stream``), so the file's full vectors are never all held and never written into new memory; sparse
rows (named tokens plus rest) are kept, as they are small, and scored at the end. Same per-prompt values, messages and
run record as validating the whole file first (``scoring.load_file`` + ``scoring.score``), tested. On the sealed split
each row is hashed as it is scored (``predictors.digest``: 32 bytes kept per row, not the row), which gives the
holdout ledger the digest ``ValidatedPredictions.digest`` gives for the same predictions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictors.digest import SubmissionDigest
from predictors.rows import PredictionRows
from predictors.stream import FileStream, Rest
from tasks.suite import Suite

from .scoring import K, Score, ScoringError, record, refuse, score_validated, with_approval
from .sparse import score_rows


def stream_of(path: Path, suite: Suite, split: str, *, rows: int | None = None) -> FileStream:
    """The validation stream of a predictions file against a suite split (``rows``: the chunk size, default
    ``predictors.stream.chunk_size``). Raises ``ScoringError`` if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"predictions file {path} does not exist")
    return FileStream(path, [p.id for p in suite.prompts(split)], suite.vocabulary, suite.background, rows=rows)


def score_stream(suite: Suite, split: str, stream: FileStream, *, k: int = K, tv_js: bool = True,
                 strict: bool = False, digest: SubmissionDigest | None = None) -> tuple[pd.DataFrame, Rest]:
    """Validate and score a stream: per-prompt metrics (``metric_columns(k)``, one row per accepted prediction in
    suite order, the order of ``rest.prompt_ids``) and what remains of the file (``predictors.stream.Rest``).

    Each chunk is scored on the dense kernels (``evals.sparse.score_rows``) against the split's cached truth
    constants; with ``strict``, chunks after the first rejected line are validated but not scored (nothing will be).
    With ``digest`` (built on ``stream.prompt_ids``), every row scored is also hashed into it (whole rows as their
    chunk is scored, sparse ones at the end), so ``digest.hexdigest(rest.prompt_ids)`` is the submission's digest.
    Memory: the stream's buffer, the scorer's chunk buffers, the sparse rows, the per-prompt values and 32 bytes per
    row of the digest."""
    from tasks.truth_stats import truth_stats

    ids, logp, nxt = suite.truth_split(split)
    where = {p: i for i, p in enumerate(ids)}
    truth_row = np.array([where[p] for p in stream.prompt_ids], dtype=np.int64)
    stats, bg = None, suite.background
    positions, parts = [], []
    for chunk in stream:
        if strict and stream.errors:
            continue
        if stats is None:
            stats = truth_stats(suite, split, ks=sorted({1, k, K}))
        rows = PredictionRows.from_dense(chunk.probs, bg)  # a view of the buffer, not a copy
        parts.append(score_rows(rows, logp, nxt, stats, truth_rows=truth_row[chunk.positions], k=k, tv_js=tv_js))
        positions.append(chunk.positions)
        if digest is not None:
            digest.add(chunk.positions, chunk.probs)
    rest = stream.rest()
    if rest.sparse.prompt_ids and not (strict and (rest.errors or rest.missing)):
        index = {p: i for i, p in enumerate(stream.prompt_ids)}
        table = score_validated(suite, split, rest.sparse, k=k, tv_js=tv_js)
        parts.append({c: table[c].to_numpy() for c in table.columns})
        positions.append(np.array([index[p] for p in rest.sparse.prompt_ids], dtype=np.int64))
        if digest is not None:
            digest.add_rows(positions[-1], rest.sparse.rows)
    if not parts:
        return pd.DataFrame(), rest
    order = np.argsort(np.concatenate(positions), kind="stable")
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts])[order] for c in parts[0]}), rest


def score_file(suite: Suite, split: str, path: Path, *, predictor: dict[str, Any], strict: bool = False,
               seed: int = 0, write: bool = True, results_root: Path | None = None,
               on_validated: Callable[[Any], None] | None = None) -> Score:
    """Validate and score a predictions file (``logitpred score``): ``scoring.score`` of ``scoring.load_file``'s
    predictions, the same values and record, computed as one stream (``score_stream``) on every split.

    Sealed: the commitment is verified and the predictor's count checked against the limit before the file is read
    (as ``scoring.score`` does before scoring; a predictor at its limit is refused without a pass over the file), the
    rows are hashed as they are scored (``predictors.digest``: the digest ``ValidatedPredictions.digest`` gives), and
    the submission is recorded in the holdout ledger once the file is accepted (an identical re-submission is not
    counted again). ``on_validated`` sees what validation found (``prompt_ids``, ``errors``, ``missing``) before the
    strict and empty checks. Raises ``ScoringError`` (no such file, strict mode with rejections, nothing valid),
    ``SuiteError`` (sealed commitment) and ``HoldoutError`` (sealed limit)."""
    stream = stream_of(path, suite, split)
    predictor = with_approval(predictor)
    digest = None
    if split == "sealed":
        from .holdout import check, default_limit

        suite.verify_commitment()
        check(suite, predictor.get("label") or predictor["name"], default_limit())  # holdout hygiene
        digest = SubmissionDigest(stream.prompt_ids)
    per_prompt, rest = score_stream(suite, split, stream, strict=strict, digest=digest)
    if on_validated is not None:
        on_validated(rest)
    refuse(rest.prompt_ids, rest.errors, rest.missing, strict)
    return record(suite, split, per_prompt, rest, predictor=predictor, seed=seed, source=Path(path), write=write,
                  results_root=results_root, digest=digest.hexdigest(rest.prompt_ids) if digest else None)
