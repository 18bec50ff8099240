"""The resumable state of a search: one JSON file (``state.json``), written atomically after every step.

Format ``logitpred-search-state/1``::

    {"format", "settings": {...}, "settings_sha256",
     "runs": {"<behaviour id>|<λ index>": {"behaviour", "lambda", "done", "steps", "counters", "rng", "method",
                                           "best"}},
     "frontier": {"<behaviour id>": [record, ...]}}

``settings`` is everything that decides the result (behaviours, template, method and options, λ grid, budget, seed,
target and reference identities); a folder's state is resumed only by a search with the same settings (same sha256),
otherwise ``SearchError`` names the settings that differ. ``counters`` are the pass counters
(``Objective.counters``), ``rng`` the numpy bit generator's state after the step, ``method`` the method's own state,
``best`` the best record of the run so far and ``frontier`` every behaviour's Pareto frontier so far: a search killed
at any point restarts from its last written step and loses no prompt it had found. ``tasks.io.atomic_write_json``
makes each write all-or-nothing (``crash_point("search:after-step")`` lets tests kill the process right after one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json, crash_point, read_json
from .template import SearchError

FORMAT = "logitpred-search-state/1"


def settings_sha256(settings: dict[str, Any]) -> str:
    """sha256 of the settings' canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def new_state(settings: dict[str, Any]) -> dict[str, Any]:
    """An empty state for ``settings``."""
    return {"format": FORMAT, "settings": settings, "settings_sha256": settings_sha256(settings), "runs": {},
            "frontier": {}}


def load_state(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The state at ``path`` if it exists (a search to resume), else a new one. Raises ``SearchError`` for a file that
    is not a search state of this format, or one written with other settings (naming the keys that differ)."""
    path = Path(path)
    if not path.exists():
        return new_state(settings)
    try:
        state = read_json(path)
    except ValueError as e:
        raise SearchError(f"{path} is not a readable search state ({e}): delete it or use another --out") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SearchError(f"{path} is not a search state of format {FORMAT}: use another --out")
    if state.get("settings_sha256") != settings_sha256(settings):
        old = state.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise SearchError(f"{path.parent} holds a search with other settings ({', '.join(diff)} differ): resume it "
                          "with the same arguments, or use another --out")
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    atomic_write_json(Path(path), state, indent=None)
    crash_point("search:after-step")


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's bit-generator state, JSON-serialisable."""
    return rng.bit_generator.state


def rng_from(state: dict[str, Any]) -> np.random.Generator:
    """A generator continuing exactly where ``rng_state`` left one."""
    bg = getattr(np.random, state["bit_generator"])()
    bg.state = state
    return np.random.Generator(bg)
