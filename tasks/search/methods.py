"""The registry of search methods and what they share: single-token swaps, the candidate filter, budget arithmetic.

A method is a class registered by name (``@register("gcg")``) with

- ``defaults``: its options and their default values (``-O key=value`` on the command line);
- ``minimum(obj, options)``: target passes its first step needs (a budget below it is refused);
- ``init(obj, x0, rng, budget, options) -> (state, free, scores)``: its starting state (JSON-serialisable: lists,
  numbers) and the full-length prompts it evaluated;
- ``step(obj, state, rng, budget, options) -> (free, scores) | None``: one step, updating ``state`` in place; returns
  the full-length prompts evaluated (``(m, k)`` and their ``Scores``; ``m`` may be 0), or ``None`` when the budget
  cannot pay for another step (the search is over).

A method never spends more than ``budget`` target passes (``Objective.spent``): each step works out what it can afford
before it runs, and the driver checks the counters after it. All randomness comes from the numpy ``rng`` the driver
passes (its state is saved with the search), so a resumed search repeats an uninterrupted one exactly.

Methods: ``gcg`` (``gcg.py``), ``beam`` (``beam.py``), ``random`` (``random_search.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .objective import Objective, Scores

REGISTRY: dict[str, Any] = {}


def register(name: str) -> Any:
    """Class decorator: register a search method under ``name`` (module doc). Raises ``ValueError`` if taken."""

    def deco(cls: Any) -> Any:
        if name in REGISTRY:
            raise ValueError(f"search method {name!r} is registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def get(name: str) -> Any:
    """The method registered as ``name``; ``ValueError`` naming the registered ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown search method {name!r}: use one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]()


def check_options(method: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the method's defaults filled in; ``ValueError`` for an unknown key or a value that is not a
    positive integer (every option of the built-in methods is a count)."""
    unknown = sorted(set(options) - set(method.defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for search method {method.name!r}: it takes "
                         f"{sorted(method.defaults)}")
    out = {**method.defaults, **options}
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"option {k}={v!r} of {method.name!r} must be a positive integer")
    return out


def affordable(obj: Objective, budget: int, overhead: int = 0) -> int:
    """Candidates the rest of the budget pays for after ``overhead`` target passes (0 or more)."""
    return max(0, (budget - obj.spent() - overhead) // obj.cost_per_candidate)


def swaps(rng: np.random.Generator, x: np.ndarray, n: int, choices: np.ndarray) -> np.ndarray:
    """``n`` copies of ``x`` ``(k,)`` with one position each (uniform) set to a token drawn uniformly from that
    position's ``choices`` ``(k, c)``: GCG's candidate batch (Zou et al. 2023, Algorithm 1) and, with every allowed
    token as the choices, random search's. ``(n, k)`` int64."""
    k = len(x)
    pos = rng.integers(0, k, size=n)
    col = rng.integers(0, choices.shape[1], size=n)
    out = np.repeat(np.asarray(x, dtype=np.int64)[None], n, axis=0)
    out[np.arange(n), pos] = choices[pos, col]
    return out


def keep_new_valid(obj: Objective, cand: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``cand`` that differ from ``seen``'s rows and from earlier rows, and re-tokenize
    (``Objective.valid``), in their order."""
    rows, out = {tuple(r) for r in (seen.tolist() if seen is not None else [])}, []
    for r in cand.tolist():
        if tuple(r) not in rows:
            rows.add(tuple(r))
            out.append(r)
    arr = np.asarray(out, dtype=np.int64).reshape(-1, cand.shape[1])
    return arr[obj.valid(arr)] if len(arr) else arr


def empty(k: int) -> tuple[np.ndarray, Scores]:
    """No prompt evaluated: ``(0, k)`` ids and empty scores."""
    z = np.zeros(0)
    return np.zeros((0, k), dtype=np.int64), Scores(z, z, z.astype(np.int64), z.astype(bool), z)


def pick(x: np.ndarray, scores: Scores) -> tuple[list[int], float]:
    """The row of ``x`` with the highest objective (first on ties) and its value."""
    i = int(np.argmax(scores.value))
    return [int(t) for t in x[i]], float(scores.value[i])
