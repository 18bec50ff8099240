"""Composite predictors: a mixture or product of experts of other predictors, with weights fitted on practice truth.

A composite is a new system (DESIGN.md): it has its own identity (kind, settings and its members' identities) and
needs its own approval, whatever its members' status.
"""

from __future__ import annotations

import json
from typing import Any


def parse_member(spec: Any) -> tuple[str, dict[str, Any]]:
    """A member given as ``"name"``, ``"name:{json options}"``, ``{"name": ..., "options": {...}}`` or ``[name, opts]``."""
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return spec["name"], dict(spec.get("options") or {})
    if isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return spec[0], dict(spec[1])
    if isinstance(spec, str) and spec:
        name, sep, opts = spec.partition(":")
        if not sep or name == "file":  # "file:..." names a predictions file, not options
            return spec, {}
        try:
            options = json.loads(opts)
        except json.JSONDecodeError as e:
            raise ValueError(f"member {spec!r}: options after ':' must be a JSON object ({e})") from e
        if not isinstance(options, dict):
            raise ValueError(f"member {spec!r}: options after ':' must be a JSON object")
        return name, options
    raise ValueError(f"member {spec!r}: give a predictor name, 'name:{{json options}}' or {{'name':..,'options':..}}")
