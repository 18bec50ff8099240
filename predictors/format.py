"""The one prediction format, and its validation at the boundary.

A prediction for one prompt is a JSON object (one per line in a ``.jsonl`` file)::

    {"prompt_id": "wiki-3fa2c1d9e0aa", "top": {" Paris": 0.6, " the": 0.1}, "rest": "uniform"}

- ``top``: candidate -> probability. Candidates are token texts as they decode (``" Paris"``), raw tokenizer forms
  (``"ĠParis"``) or, in the list form ``[[" Paris", 0.6], [12, 0.1]]``, integer token ids. A name is matched exactly,
  then in its Unicode NFC form, and must name exactly one token: a name that is the decoded text of several tokens, or
  one token's text and another's raw form, is refused as ambiguous, listing every id it names (``tasks/vocab.py``).
- ``rest``: how the remaining mass ``1 - sum(top)`` spreads over all *other* tokens: ``"uniform"`` (default) or
  ``"unigram"`` (proportional to the suite's train-part unigram).
- Or a full vector: ``"probs": [...]`` (vocabulary-sized list) or ``"probs_b64"`` (base64 of little-endian float32),
  which must sum to 1 within ``tol``.

Validation defines every prediction as a full, strictly positive distribution, so every metric is finite:
- the named mass may not exceed 1 by more than ``tol`` (1e-3); NaN, inf, negatives and unknown tokens are rejected;
- at least ``min_rest`` (1e-6) is left for the rest: if the named mass leaves less, the named probabilities are scaled
  by ``(1 - min_rest) / sum`` (documented, not silent: it changes probabilities by at most ``tol + min_rest``);
- a full vector's zero entries are treated as unnamed tokens and share ``min_rest`` by the rest rule.
Errors name the line, the prompt id and the field; a bad line never discards good ones (see ``validate_file``).

What validation keeps is the prediction as given (``check`` -> ``Row``; a file's or predictor's rows ->
``PredictionRows``): named token ids, their probabilities after the min-rest scaling, the rest and its rule, so a
``top`` prediction costs 16 bytes per named token, not a vocabulary-sized vector; full vectors (unless mostly zeros)
are kept whole (by ``validate``, a float32 one without zeros as given: ``predictors.rows.RowBlocks``). ``densify`` /
``expand`` / ``ValidatedPredictions.probs`` give the float64 vector, bit for bit as before; scoring (``evals.sparse``)
never needs it for a sparse row.

Rows in memory live in ``predictors/rows.py``; reading, validating and writing files of predictions in
``predictors/jsonl.py``.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pybase64  # SIMD base64: decoding a 49k-entry vector in 9 us, not 330 us (the stdlib's)

from tasks.vocab import Vocabulary

REST_RULES = ("uniform", "unigram")
TOL = 1e-3
MIN_REST = 1e-6
SPARSE_FRACTION = 0.125  # a full vector with at most this share of non-zero entries is kept sparse


class PredictionError(ValueError):
    """One prediction is invalid; the message names the prompt and field."""


@dataclass(frozen=True)
class Prediction:
    """One prompt's prediction as given: ``top`` (names or ids -> p) with a ``rest`` rule, or a full vector."""

    prompt_id: str
    top: Mapping[str | int, float] | Sequence[tuple[str | int, float]] = field(default_factory=dict)
    rest: str = "uniform"
    probs: np.ndarray | None = None  # full vector instead of top/rest

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one line: ``top`` as an object when every candidate is a string, else as a list."""
        if self.probs is not None:
            data = np.asarray(self.probs, dtype="<f4").tobytes()
            return {"prompt_id": self.prompt_id, "probs_b64": pybase64.b64encode(data).decode()}
        top = self.top.items() if isinstance(self.top, Mapping) else self.top
        if all(isinstance(c, str) for c, _ in top):
            return {"prompt_id": self.prompt_id, "top": {c: float(p) for c, p in top}, "rest": self.rest}
        return {"prompt_id": self.prompt_id, "top": [[c, float(p)] for c, p in top], "rest": self.rest}

    @classmethod
    def from_json(cls, obj: Any) -> Prediction:
        """The prediction of one parsed line; ``PredictionError`` for a wrong shape (tokens are checked by densify)."""
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
                    probs = np.frombuffer(pybase64.b64decode(obj["probs_b64"], validate=True), dtype="<f4")
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


class Row(NamedTuple):
    """One validated prediction as it is kept: named tokens and a rest rule (``full`` is None), or a whole vector.

    The distribution is ``q[ids] = ps`` and, over every other token, ``rest`` spread by the rule (uniform, or the
    background unigram renormalized over the unnamed tokens); ``expand`` writes it out exactly as ``densify`` does.
    """

    ids: np.ndarray | None  # named token ids (int64), in the order given
    ps: np.ndarray | None  # their probabilities after the min-rest scaling (float64, > 0)
    rest: float  # the mass of the unnamed tokens (>= min_rest); 0.0 for a whole vector
    unigram: bool  # rest rule: True for "unigram", False for "uniform"
    full: np.ndarray | None  # the whole distribution (float64), for a row kept dense


def check(pred: Prediction, vocab: Vocabulary, background: np.ndarray | None = None, *, tol: float = TOL,
          min_rest: float = MIN_REST, explain: Callable[[str], str] | None = None,
          sparse_fraction: float = SPARSE_FRACTION, out: np.ndarray | None = None) -> Row:
    """Validate one prediction (the rules of ``densify``) and return it without densifying what it did not say.

    A ``top`` prediction comes back as its named tokens and rest; a full vector with at most ``sparse_fraction`` of
    the vocabulary non-zero likewise (its zeros are the unnamed tokens); any other full vector, or one naming every
    token, as a whole vector. ``expand(check(...))`` is bit for bit ``densify(...)``.
    """
    V, pid = len(vocab), pred.prompt_id
    if pred.rest not in REST_RULES:
        raise PredictionError(f"prompt {pid}: 'rest' is {pred.rest!r}; use one of {', '.join(REST_RULES)}")
    if pred.rest == "unigram" and background is None:
        raise PredictionError(f"prompt {pid}: rest 'unigram' needs the suite's background unigram")
    if pred.probs is not None:
        given = pred.probs
        # a float vector of the right size is written straight into ``out`` (the validator's block slot or reused
        # buffer: no temporary) and divided there in place; min and the count of zeros read the given values (float32:
        # half the bytes), which the float64 ones equal exactly
        if (out is not None and isinstance(given, np.ndarray) and given.dtype in (np.float32, np.float64)
                and given.shape == (V,)):
            q = out
            np.copyto(q, given)
        else:
            q = given = np.ascontiguousarray(given, dtype=np.float64)
            if q.shape != (V,):
                raise PredictionError(f"prompt {pid}: full vector has {q.size} entries; the target's vocabulary has "
                                      f"{V}")
        low = given.min()  # NaN if any entry is NaN
        total = q.sum()
        if not (math.isfinite(total) and low >= 0):  # a finite sum means no NaN or inf entry
            bad = np.flatnonzero(~np.isfinite(q) | (q < 0))
            if bad.size:
                raise PredictionError(f"prompt {pid}: probs[{bad[0]}] = {q[bad[0]]} is not a finite non-negative "
                                      "number")
        if abs(total - 1.0) > tol:
            raise PredictionError(f"prompt {pid}: full vector sums to {total:.6f}, not 1 (tolerance {tol})")
        if low > 0 or np.count_nonzero(given) == V:  # every token named: q / total (ps = q, and ps.sum() is total)
            return Row(None, None, 0.0, False, q / total if out is None else np.divide(q, total, out=out))
        named = np.flatnonzero(q > 0)
        ps = q[named]
    else:
        explain = explain or vocab.explain_unknown
        pairs = list(pred.top.items()) if isinstance(pred.top, Mapping) else list(pred.top)
        named_list, ps_list = [], []
        for cand, p in pairs:
            if isinstance(cand, bool) or not isinstance(cand, (str, int)):
                raise PredictionError(f"prompt {pid}: top[{cand!r}]: a candidate must be a token string or an "
                                      "integer id")
            if isinstance(cand, int):
                if not 0 <= cand < V:
                    raise PredictionError(f"prompt {pid}: top[{cand!r}]: token id out of range [0, {V})")
                tid = cand
            else:
                tid = vocab.lookup(cand)
                if tid is None:
                    raise PredictionError(f"prompt {pid}: top[{cand!r}]: {explain(cand)}")
            if isinstance(p, int) and not isinstance(p, bool) and abs(p) > 1:  # huge ints overflow math.isfinite
                raise PredictionError(f"prompt {pid}: top[{cand!r}]: probability {p!r} is above 1")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
                raise PredictionError(f"prompt {pid}: top[{cand!r}]: probability {p!r} is not a finite number >= 0")
            if p > 0:
                named_list.append(tid)
                ps_list.append(float(p))
        if len(set(named_list)) != len(named_list):
            seen = {}
            for t in named_list:
                seen[t] = seen.get(t, 0) + 1
            dup = next(t for t in named_list if seen[t] > 1)
            raise PredictionError(f"prompt {pid}: token {dup} ({vocab.text[dup]!r}) is named more than once in 'top'")
        named = np.array(named_list, dtype=np.int64)
        ps = np.array(ps_list, dtype=np.float64)
        total = ps.sum()
        if total > 1.0 + tol:
            raise PredictionError(f"prompt {pid}: 'top' probabilities sum to {total:.6f} > 1 (tolerance {tol})")
    total = ps.sum()
    if named.size == V:  # every token named: nothing to spread, only rounding to remove
        q = np.empty(V)
        q[named] = ps / total
        return Row(None, None, 0.0, False, q)
    rest = 1.0 - total
    if rest < min_rest:
        ps = ps * ((1.0 - min_rest) / total)
        rest = min_rest
    row = Row(named, ps, float(rest), pred.rest == "unigram", None)
    if pred.probs is not None and named.size > sparse_fraction * V:
        return row._replace(ids=None, ps=None, rest=0.0, unigram=False, full=expand(row, V, background, out=out))
    return row


def expand(row: Row, vocab_size: int, background: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The full distribution (float64) of a validated row, bit for bit what ``densify`` returns for it."""
    q = np.empty(vocab_size) if out is None else out
    if row.full is not None:
        q[:] = row.full
        return q
    if row.unigram:
        others = np.ones(vocab_size, dtype=bool)
        others[row.ids] = False
        weights = background[others]
        q[others] = row.rest * weights / weights.sum()
    else:  # rest * ones / (count of ones) is rest / count, exactly
        q.fill(row.rest / (vocab_size - row.ids.size))
    q[row.ids] = row.ps
    return q


def densify(pred: Prediction, vocab: Vocabulary, background: np.ndarray | None = None, *, tol: float = TOL,
            min_rest: float = MIN_REST, explain: Callable[[str], str] | None = None) -> np.ndarray:
    """Validate one prediction and return its full, strictly positive distribution (float64, sums to 1).

    ``explain(name)`` words the refusal of a name that is no single token (default: ``vocab.explain_unknown``, with
    near-match suggestions; files use a ``Hints`` budget instead). Scoring does not need this vector: ``check``
    returns the same prediction without densifying what it did not say.
    """
    row = check(pred, vocab, background, tol=tol, min_rest=min_rest, explain=explain, sparse_fraction=1.0)
    return row.full if row.full is not None else expand(row, len(vocab), background)
