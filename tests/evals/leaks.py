"""Helpers for the "no sealed truth in logs or reports" tests: the numbers a leak would show, and the numbers a text holds."""

import re

import numpy as np


def truth_numbers(suite, split, top=20):
    """Target log-probs and probabilities that a leak would show: the top ``top`` per prompt and the realized token's
    (as log-prob, negated log-prob and probability, to 6 significant digits; 0 and +-1 left out as uninformative)."""
    _, logp, nxt = suite.truth_split(split)
    vals = set()
    for row, x in zip(logp.astype(np.float64), nxt, strict=True):
        idx = np.append(np.argsort(-row)[:top], x)
        for v in row[idx]:
            for w in (v, -v, np.exp(v)):
                if abs(w) > 1e-3 and abs(w) != 1.0:
                    vals.add(f"{w:.6g}")
    return vals


def numbers_in(text):
    """Every decimal number with at least 4 digits after the point in ``text``, to 6 significant digits."""
    return {f"{float(x):.6g}" for x in re.findall(r"-?\d+\.\d{4,}(?:[eE][-+]?\d+)?", text)}
