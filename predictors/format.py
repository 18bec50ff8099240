"""The one prediction format, and its validation at the boundary.

A prediction for one prompt is a JSON object (one per line in a ``.jsonl`` file)::

    {"prompt_id": "wiki-3fa2c1d9e0aa", "top": {" Paris": 0.6, " the": 0.1}, "rest": "uniform"}

- ``top``: candidate -> probability. Candidates are token texts as they decode (``" Paris"``), raw tokenizer forms
  (``"ĠParis"``) or, in the list form ``[[" Paris", 0.6], [12, 0.1]]``, integer token ids.
- ``rest``: how the remaining mass ``1 - sum(top)`` spreads over all *other* tokens: ``"uniform"`` (default) or
  ``"unigram"`` (proportional to the suite's train-part unigram).
- Or a full vector: ``"probs": [...]`` (vocabulary-sized list) or ``"probs_b64"`` (base64 of little-endian float32),
  which must sum to 1 within ``tol``.

Validation turns every prediction into a full, strictly positive float64 vector, so every metric is finite:
- the named mass may not exceed 1 by more than ``tol`` (1e-3); NaN, inf, negatives and unknown tokens are rejected;
- at least ``min_rest`` (1e-6) is left for the rest: if the named mass leaves less, the named probabilities are scaled
  by ``(1 - min_rest) / sum`` (documented, not silent: it changes probabilities by at most ``tol + min_rest``);
- a full vector's zero entries are treated as unnamed tokens and share ``min_rest`` by the rest rule.
Errors name the line, the prompt id and the field; a bad line never discards good ones (see ``load_predictions``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.vocab import Vocabulary

REST_RULES = ("uniform", "unigram")
TOL = 1e-3
MIN_REST = 1e-6


class PredictionError(ValueError):
    """One prediction is invalid; the message names the prompt and field."""


@dataclass(frozen=True)
class Prediction:
    prompt_id: str
    top: Mapping[str | int, float] | Sequence[tuple[str | int, float]] = field(default_factory=dict)
    rest: str = "uniform"
    probs: np.ndarray | None = None  # full vector instead of top/rest

    def to_json(self) -> dict[str, Any]:
        if self.probs is not None:
            data = np.asarray(self.probs, dtype="<f4").tobytes()
            return {"prompt_id": self.prompt_id, "probs_b64": base64.b64encode(data).decode()}
        top = self.top.items() if isinstance(self.top, Mapping) else self.top
        if all(isinstance(c, str) for c, _ in top):
            return {"prompt_id": self.prompt_id, "top": {c: float(p) for c, p in top}, "rest": self.rest}
        return {"prompt_id": self.prompt_id, "top": [[c, float(p)] for c, p in top], "rest": self.rest}

    @classmethod
    def from_json(cls, obj: Any) -> Prediction:
        if not isinstance(obj, dict):
            raise PredictionError(f"expected a JSON object, got {type(obj).__name__}")
        pid = obj.get("prompt_id")
        if not isinstance(pid, str) or not pid:
            raise PredictionError("missing or empty 'prompt_id' (a string)")
        unknown = set(obj) - {"prompt_id", "top", "rest", "probs", "probs_b64", "meta"}
        if unknown:
            raise PredictionError(f"prompt {pid}: unknown field(s) {sorted(unknown)}; allowed: top, rest, probs, probs_b64")
        if "probs" in obj or "probs_b64" in obj:
            if "top" in obj:
                raise PredictionError(f"prompt {pid}: give either 'top' or a full vector, not both")
            if "probs_b64" in obj:
                try:
                    probs = np.frombuffer(base64.b64decode(obj["probs_b64"], validate=True), dtype="<f4")
                except (binascii.Error, ValueError, TypeError) as e:
                    raise PredictionError(f"prompt {pid}: 'probs_b64' is not base64 of float32 values ({e})") from e
            else:
                try:
                    probs = np.asarray(obj["probs"], dtype=np.float64)
                except (TypeError, ValueError, OverflowError) as e:
                    raise PredictionError(f"prompt {pid}: 'probs' must be a list of numbers ({e})") from e
                if probs.ndim != 1:
                    raise PredictionError(f"prompt {pid}: 'probs' must be a flat list of numbers")
            return cls(pid, probs=probs)
        top = obj.get("top", {})
        if isinstance(top, dict):
            pairs = list(top.items())
        elif isinstance(top, list) and all(isinstance(x, list) and len(x) == 2 for x in top):
            pairs = [(c, p) for c, p in top]
        else:
            raise PredictionError(f"prompt {pid}: 'top' must be an object {{token: p}} or a list of [token, p] pairs")
        return cls(pid, pairs, obj.get("rest", "uniform"))


def densify(pred: Prediction, vocab: Vocabulary, background: np.ndarray | None = None, *, tol: float = TOL,
            min_rest: float = MIN_REST) -> np.ndarray:
    """Validate one prediction and return its full, strictly positive distribution (float64, sums to 1)."""
    V, pid = len(vocab), pred.prompt_id
    if pred.rest not in REST_RULES:
        raise PredictionError(f"prompt {pid}: 'rest' is {pred.rest!r}; use one of {', '.join(REST_RULES)}")
    if pred.rest == "unigram" and background is None:
        raise PredictionError(f"prompt {pid}: rest 'unigram' needs the suite's background unigram")
    if pred.probs is not None:
        q = np.asarray(pred.probs, dtype=np.float64)
        if q.shape != (V,):
            raise PredictionError(f"prompt {pid}: full vector has {q.size} entries; the target's vocabulary has {V}")
        bad = np.flatnonzero(~np.isfinite(q) | (q < 0))
        if bad.size:
            raise PredictionError(f"prompt {pid}: probs[{bad[0]}] = {q[bad[0]]} is not a finite non-negative number")
        total = q.sum()
        if abs(total - 1.0) > tol:
            raise PredictionError(f"prompt {pid}: full vector sums to {total:.6f}, not 1 (tolerance {tol})")
        named = np.flatnonzero(q > 0)
        ps = q[named]
    else:
        pairs = list(pred.top.items()) if isinstance(pred.top, Mapping) else list(pred.top)
        named_list, ps_list = [], []
        for cand, p in pairs:
            where = f"prompt {pid}: top[{cand!r}]"
            if isinstance(cand, bool) or not isinstance(cand, (str, int)):
                raise PredictionError(f"{where}: a candidate must be a token string or an integer id")
            if isinstance(cand, int):
                if not 0 <= cand < V:
                    raise PredictionError(f"{where}: token id out of range [0, {V})")
                tid = cand
            else:
                tid = vocab.lookup(cand)
                if tid is None:
                    raise PredictionError(f"{where}: {vocab.explain_unknown(cand)}")
            if isinstance(p, int) and not isinstance(p, bool) and abs(p) > 1:  # huge ints overflow math.isfinite
                raise PredictionError(f"{where}: probability {p!r} is above 1")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
                raise PredictionError(f"{where}: probability {p!r} is not a finite number >= 0")
            if p > 0:
                named_list.append(tid)
                ps_list.append(float(p))
        named = np.array(named_list, dtype=np.int64)
        if np.unique(named).size != named.size:
            dup = [vocab.text[t] for t in named if (named == t).sum() > 1][0]
            raise PredictionError(f"prompt {pid}: token {dup!r} is named more than once in 'top'")
        ps = np.array(ps_list, dtype=np.float64)
        total = ps.sum()
        if total > 1.0 + tol:
            raise PredictionError(f"prompt {pid}: 'top' probabilities sum to {total:.6f} > 1 (tolerance {tol})")
    total = ps.sum()
    others = np.ones(V, dtype=bool)
    others[named] = False
    if not others.any():  # every token named: nothing to spread, only rounding to remove
        q = np.empty(V)
        q[named] = ps / total
        return q
    rest = 1.0 - total
    if rest < min_rest:
        ps = ps * ((1.0 - min_rest) / total)
        rest = min_rest
    weights = background[others] if pred.rest == "unigram" else np.ones(int(others.sum()))
    q = np.empty(V)
    q[others] = rest * weights / weights.sum()
    q[named] = ps
    return q


@dataclass
class ValidatedPredictions:
    prompt_ids: list[str]  # in the suite's order, only accepted ones
    probs: np.ndarray  # (n, vocab) float64, rows strictly positive and summing to 1
    errors: list[str]  # one readable message per rejected line or prompt
    missing: list[str]  # suite prompts without an accepted prediction


def read_jsonl(path: Path) -> tuple[list[tuple[int, Prediction]], list[str]]:
    """Parse a predictions file; returns (line number, prediction) pairs and messages for lines that failed."""
    import gzip

    preds, errors = [], []
    opener = gzip.open if path.suffix == ".gz" else open
    # bytes that are not UTF-8 spoil only their own line (decoded with replacement, then rejected as bad JSON/tokens)
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if "\ufffd" in line and "\\ufffd" not in line:
                errors.append(f"line {n}: not valid UTF-8 text; save the file as UTF-8")
                continue
            try:
                preds.append((n, Prediction.from_json(json.loads(line))))
            except json.JSONDecodeError as e:
                errors.append(f"line {n}: malformed JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                errors.append(f"line {n}: malformed JSON (nested too deeply)")
            except PredictionError as e:
                errors.append(f"line {n}: {e}")
    return preds, errors


def validate(preds: Iterable[tuple[int | None, Prediction]], prompt_ids: Sequence[str], vocab: Vocabulary,
             background: np.ndarray | None = None, *, errors: list[str] | None = None) -> ValidatedPredictions:
    """Check ids (unknown, duplicate) and turn each prediction into a full distribution; collect every problem."""
    errors = list(errors or [])
    index = {pid: i for i, pid in enumerate(prompt_ids)}
    rows: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for line, pred in preds:
        at = f"line {line}: " if line is not None else ""
        if pred.prompt_id not in index:
            errors.append(f"{at}unknown prompt_id {pred.prompt_id!r}: not in this suite split")
            continue
        if pred.prompt_id in seen:
            errors.append(f"{at}duplicate prompt_id {pred.prompt_id!r}: only the first prediction is kept")
            continue
        seen.add(pred.prompt_id)
        try:
            rows[pred.prompt_id] = densify(pred, vocab, background)
        except PredictionError as e:
            errors.append(f"{at}{e}")
    ordered = [pid for pid in prompt_ids if pid in rows]
    probs = np.stack([rows[p] for p in ordered]) if ordered else np.empty((0, len(vocab)))
    return ValidatedPredictions(ordered, probs, errors, [p for p in prompt_ids if p not in rows])


def write_jsonl(path: Path, preds: Iterable[Prediction]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in preds:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n
