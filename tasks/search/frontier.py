"""The Pareto frontier of found prompts: success ``log P(o | x)`` against plausibility (per-token ``log P_R(x)``).

A point a *dominates* b when it is at least as good on both axes and better on one (both axes: higher is better). The
frontier is the set of points no other point dominates; of several prompts at exactly the same point, the first seen
is kept. Every maximiser of ``J_λ = log P + λ · plausibility`` over a set of points, for any λ >= 0, lies on its
frontier (a dominated point is beaten by its dominator at every λ), so the frontier of everything a search evaluated
holds its best prompt for each λ of the grid and for every λ in between.

Records are dicts holding at least ``log_p`` and ``ref_per_token`` (``tasks.search.driver`` writes the rest).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

X, Y = "ref_per_token", "log_p"


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether record ``a`` dominates ``b`` (module doc)."""
    return a[X] >= b[X] and a[Y] >= b[Y] and (a[X] > b[X] or a[Y] > b[Y])


def merge(frontier: list[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frontier of ``frontier`` + ``new``, sorted by plausibility (ascending; success then descends). Records
    are kept as given (not copied); a new record at a point already held is dropped."""
    pts = list(frontier) + [r for r in new if np.isfinite(r[X]) and np.isfinite(r[Y])]
    # sort by plausibility descending, success descending: a record is on the frontier iff its success beats every
    # success seen before it (ties on both axes keep the first seen: stable sort, strict comparison)
    order = sorted(range(len(pts)), key=lambda i: (-pts[i][X], -pts[i][Y], i))
    keep: list[dict[str, Any]] = []
    best = -np.inf
    for i in order:
        if pts[i][Y] > best:
            keep.append(pts[i])
            best = pts[i][Y]
    return keep[::-1]


def is_frontier(points: list[dict[str, Any]]) -> bool:
    """Whether no record of ``points`` dominates another and no two sit at the same point (the direct O(n^2) check
    the tests use against ``merge``)."""
    return not any(dominates(a, b) or (a is not b and a[X] == b[X] and a[Y] == b[Y])
                   for a in points for b in points)
