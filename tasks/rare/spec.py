"""The rare-behaviour spec: behaviours and input distributions declared in YAML, validated at the boundary, hashed.

``rare.yaml`` (the repository's default; ``logitpred rare build --spec FILE`` takes another)::

    version: 1
    corpus: wiki                  # token lists are built from this corpus's train part
    distributions:
      - {id: hex, kind: product, prefix: "The checksum is", tokens: hex, positions: 3, size: 16}
      - {id: wiki-practice, kind: suite, suite: wiki, split: practice}
      - {id: tiny-text, kind: helper, helper: tiny-helper, start: "The", tokens: 12, samples: 64, seed: 0}
    behaviours:
      - {id: swear, texts: [" damn", " hell"]}
      - {id: newline, token: 198}
    reference: {tokens: 16, low: 1.0e-8, high: 1.0e-3}

A ``product`` distribution is a fixed ``prefix`` text (tokenized by the target tokenizer) followed by ``positions``
free tokens, each drawn from the ``size`` most frequent train tokens of class ``tokens``
(``tasks.rare.distributions.TOKEN_CLASSES``), weighted by frequency. A ``suite`` distribution is a built suite's split,
uniform over prompts. A ``helper`` distribution is ``samples`` prompts sampled from an approved helper model
(``helper``: a registered helper predictor's name) as continuations of ``start`` of ``tokens`` helper tokens, with
``seed`` (``tasks.rare.generated``), uniform over them. Behaviour texts are checked to tokenize as themselves after every product prefix
(``tasks.rare.behaviours.from_texts``). The ``reference`` section picks, per product distribution, ``tokens`` single
tokens whose exact probability spreads log-uniformly over [low, high] (``tasks.rare.reference``).

``RareSpec.sha256`` (over the canonical JSON of the validated spec) goes into every cache key and result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distributions import TOKEN_CLASSES

KINDS = ("product", "suite", "helper")


class SpecError(ValueError):
    """A rare-behaviour spec that is invalid; the message names the entry, the key and the fix."""


@dataclass(frozen=True)
class RareSpec:
    """The validated spec (module doc): ``distributions`` and ``behaviours`` as dicts in file order."""

    path: str
    corpus: str
    distributions: tuple[dict[str, Any], ...]
    behaviours: tuple[dict[str, Any], ...]
    reference: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> dict[str, Any]:
        return {"version": 1, "corpus": self.corpus, "distributions": list(self.distributions),
                "behaviours": list(self.behaviours), "reference": self.reference}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()

    def distribution(self, did: str) -> dict[str, Any]:
        """The declared distribution ``did``. Raises ``SpecError`` naming the known ones."""
        for d in self.distributions:
            if d["id"] == did:
                return d
        raise SpecError(f"unknown distribution {did!r}: {self.path} declares {[d['id'] for d in self.distributions]}")


def _need(entry: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SpecError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _ids(entries: Any, what: str, path: str) -> None:
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{path}: '{what}' must be a non-empty list")
    seen = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not e["id"]:
            raise SpecError(f"{path}: {what}[{i}] must be a mapping with a non-empty string 'id'")
        if e["id"] in seen:
            raise SpecError(f"{path}: {what} id {e['id']!r} is declared twice")
        seen.add(e["id"])


def parse_spec(data: Any, path: str = "rare.yaml") -> RareSpec:
    """Validate a parsed spec (module doc). Raises ``SpecError`` naming the entry and key."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping")
    unknown = set(data) - {"version", "corpus", "distributions", "behaviours", "reference"}
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {sorted(unknown)}")
    if data.get("version") != 1:
        raise SpecError(f"{path}: 'version' must be 1")
    corpus = _need(data, "corpus", str, path)
    _ids(data.get("distributions"), "distributions", path)
    _ids(data.get("behaviours"), "behaviours", path)
    dists = []
    for d in data["distributions"]:
        where = f"{path}: distribution {d['id']!r}"
        kind = d.get("kind")
        if kind == "product":
            allowed = {"id", "kind", "prefix", "tokens", "positions", "size"}
            _need(d, "prefix", str, where)
            if d.get("tokens") not in TOKEN_CLASSES:
                raise SpecError(f"{where}: 'tokens' must be one of {', '.join(TOKEN_CLASSES)}, got {d.get('tokens')!r}")
            for key in ("positions", "size"):
                if _need(d, key, int, where) < 1:
                    raise SpecError(f"{where}: '{key}' must be >= 1")
        elif kind == "suite":
            allowed = {"id", "kind", "suite", "split"}
            _need(d, "suite", str, where)
            if d.get("split") not in ("practice", "sealed"):
                raise SpecError(f"{where}: 'split' must be practice or sealed")
        elif kind == "helper":
            allowed = {"id", "kind", "helper", "start", "tokens", "samples", "seed"}
            _need(d, "helper", str, where)
            if not _need(d, "start", str, where):
                raise SpecError(f"{where}: 'start' must be a non-empty text")
            for key in ("tokens", "samples"):
                if _need(d, key, int, where) < 1:
                    raise SpecError(f"{where}: '{key}' must be >= 1")
            d = {"seed": 0, **d}
            _need(d, "seed", int, where)
        else:
            raise SpecError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if set(d) - allowed:
            raise SpecError(f"{where}: unknown key(s) {sorted(set(d) - allowed)}")
        dists.append(dict(d))
    behs = []
    for b in data["behaviours"]:
        where = f"{path}: behaviour {b['id']!r}"
        if ("texts" in b) == ("token" in b) or set(b) - {"id", "texts", "token"}:
            raise SpecError(f"{where}: give exactly one of 'texts' (a list of strings) or 'token' (an id)")
        if "texts" in b and (not isinstance(b["texts"], list) or not b["texts"]
                             or not all(isinstance(t, str) and t for t in b["texts"])):
            raise SpecError(f"{where}: 'texts' must be a non-empty list of non-empty strings")
        if "token" in b:
            _need(b, "token", int, where)
        behs.append(dict(b))
    ref = data.get("reference") or {}
    if not isinstance(ref, dict) or set(ref) - {"tokens", "low", "high"}:
        raise SpecError(f"{path}: 'reference' takes tokens, low, high")
    ref = {"tokens": int(ref.get("tokens", 16)), "low": float(ref.get("low", 1e-8)),
           "high": float(ref.get("high", 1e-3))}
    if ref["tokens"] < 1 or not 0 < ref["low"] < ref["high"] < 1:
        raise SpecError(f"{path}: reference needs tokens >= 1 and 0 < low < high < 1, got {ref}")
    return RareSpec(path, corpus, tuple(dists), tuple(behs), ref)


def read_spec(path: str | Path) -> RareSpec:
    """Read and validate a spec file. Raises ``SpecError`` for a missing or invalid file."""
    from ..io import read_yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"rare-behaviour spec {p} does not exist (the repository's default is rare.yaml)")
    try:
        data = read_yaml(p)
    except Exception as e:  # noqa: BLE001 - YAML errors and duplicate keys, named
        raise SpecError(f"{p} is not valid YAML: {e}") from e
    return parse_spec(data, str(p))
