"""The previous version as a predictor: ``version:NAME`` serves version NAME's own next-token distributions.

Once version n of a series is approved (``logitpred versions approve FILE n``: the approved team predicted it well
enough), its outputs may predict version n+1, exactly as an approved helper's would: the predictor receives prompt
views (id, text, token ids; ``predictors.base.PromptView``) and nothing of the version it predicts, runs version n
on ``bos + token ids`` (a series keeps one tokenizer, so no mapping is needed), and mixes a small floor in
(``(1 - smoothing) p + smoothing * background``, default 1e-3 of the suite's unigram) so no token of the target is
ruled out. The approval rule is the one of ``predictors.approval``: an unapproved version is refused unless the run
opts in (``--allow-unapproved``), and its identity (``version_system_identity``) is its weights, tokenizer,
precision and quantization plus the output settings, so approving the float32 version approves neither its
bfloat16 nor its int8 deployment.

Names: ``version:NAME`` (a version name unique among the built series) or ``version:SERIES/NAME``, registered for
every series built under the data dir (``register_versions``; ``evals.versions`` calls it after a build).
A version never predicts itself: a context whose target has the version's identity is refused.

Outputs are cached per (version identity, settings, prompt token ids) under ``<data_dir>/version-cache``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import atomic_save_npy
from tasks.paths import data_dir

from .base import PredictorContext, PromptView, register
from .format import Prediction

PREFIX = "version:"
DEFAULT_SETTINGS = {"smoothing": 1e-3, "rest": "unigram"}
NON_OUTPUT = ("batch_size", "cache")


@dataclass(frozen=True)
class _Item:  # what tasks.versions.version_logprobs needs of a prompt; each prompt is its own "document"
    id: str
    token_ids: tuple[int, ...]

    @property
    def doc(self) -> str:
        return self.id


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    out = {**DEFAULT_SETTINGS, **{k: options[k] for k in DEFAULT_SETTINGS if k in options}}
    unknown = set(options) - set(DEFAULT_SETTINGS) - set(NON_OUTPUT)
    if unknown:
        raise ValueError(f"version predictor: unknown option(s) {sorted(unknown)}; options: smoothing, rest "
                         "(unigram|uniform), batch_size, cache")
    if not isinstance(out["smoothing"], int | float) or not 0.0 < out["smoothing"] < 1.0:
        raise ValueError(f"version predictor: smoothing must be in (0, 1), got {out['smoothing']!r}")
    if out["rest"] not in ("unigram", "uniform"):
        raise ValueError(f"version predictor: rest must be unigram or uniform, got {out['rest']!r}")
    return out


def version_system_identity(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The approval identity of ``version:NAME`` with ``options``: ``{"kind": "version", "version": {weights,
    tokenizer, base weights, dtype, quantize, id}, "settings": {smoothing, rest}, "key"}``; the key is the first 16 hex
    of the sha256 of the rest (canonical JSON). Raises ``VersionsError`` when no built series has the version,
    ``ValueError`` for a bad option."""
    from tasks.versions import find_version

    from .approval import canonical

    _, _, ident = find_version(name.removeprefix(PREFIX))
    version = {k: v for k, v in ident.items() if k != "name"}
    out = {"kind": "version", "version": version, "settings": _settings(dict(options or {}))}
    return {**out, "key": hashlib.sha256(canonical(out).encode()).hexdigest()[:16]}


class VersionPredictor:
    """Version NAME's own distributions over the target's vocabulary (full vectors), smoothed by a small floor."""

    def __init__(self, ctx: PredictorContext, name: str, /, **options: Any) -> None:
        from tasks.versions import VersionsError, find_version

        self.name, self.ctx = name, ctx
        self.settings = _settings(options)
        self.batch_size = int(options.get("batch_size", 8))
        self.cache = bool(options.get("cache", True))
        self.series, self.spec, self.version_identity = find_version(name.removeprefix(PREFIX))
        if self.version_identity["tokenizer_sha256"] != ctx.tokenizer_sha256:
            raise VersionsError(f"{name}: version {self.spec.name!r} uses another tokenizer than suite {ctx.suite!r}'s "
                                "target: a version predicts only targets of its own tokenizer")
        if ctx.target_weights_sha256 and ctx.target_weights_sha256 == self.version_identity["weights_sha256"]:
            raise VersionsError(f"{name}: version {self.spec.name!r} is the target of suite {ctx.suite!r} "
                                f"({self.version_identity['id']}): a predictor may never run the target model")
        key = json.dumps(self.settings, sort_keys=True)
        self.settings_key = hashlib.sha256(key.encode()).hexdigest()[:8]

    def identity(self) -> dict[str, Any]:
        return {"version": self.version_identity, "series": self.series, "settings": self.settings}

    def _cache_file(self, p: PromptView) -> Path:
        digest = hashlib.sha256(json.dumps(list(p.token_ids)).encode()).hexdigest()[:16]
        return (data_dir() / "version-cache" / f"{self.version_identity['id']}-{self.settings_key}" /
                f"{self.ctx.tokenizer_sha256[:8]}-{digest}.npy")

    def distributions(self, prompts: Sequence[PromptView]) -> np.ndarray:
        """Full predictions (float64, ``(n, target vocab)``, strictly positive rows summing to 1)."""
        out = np.empty((len(prompts), self.ctx.vocab_size))
        todo = []
        for i, p in enumerate(prompts):
            f = self._cache_file(p)
            if self.cache and f.is_file():
                out[i] = np.load(f).astype(np.float64)
                out[i] /= out[i].sum()
            else:
                todo.append(i)
        if todo:
            out[todo] = self._compute([prompts[i] for i in todo])
            if self.cache:
                for i in todo:
                    f = self._cache_file(prompts[i])
                    f.parent.mkdir(parents=True, exist_ok=True)
                    atomic_save_npy(f, out[i].astype(np.float32))
        return out

    def _compute(self, prompts: Sequence[PromptView]) -> np.ndarray:
        from tasks.forward import model_context
        from tasks.versions import load_version, version_logprobs

        target = load_version(self.spec)
        limit = model_context(target.model.config)
        keep = max(1, limit - len(self.ctx.bos_ids)) if limit else None
        items = [_Item(p.id, tuple(p.token_ids[-keep:] if keep else p.token_ids)) for p in prompts]
        logp = version_logprobs(target, items, bos_ids=self.ctx.bos_ids, batch_size=self.batch_size)
        p = np.exp(logp.astype(np.float64))[:, : self.ctx.vocab_size]
        p /= p.sum(axis=1, keepdims=True)
        bg = (self.ctx.background if self.settings["rest"] == "unigram"
              else np.full(self.ctx.vocab_size, 1.0 / self.ctx.vocab_size))
        s = float(self.settings["smoothing"])
        return (1.0 - s) * p + s * bg[None, :]

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        q = self.distributions(prompts)
        return [Prediction(p.id, probs=row) for p, row in zip(prompts, q, strict=True)]


_FACTORIES: dict[str, Any] = {}


def _factory(name: str) -> Any:
    if name not in _FACTORIES:
        def make(ctx: PredictorContext, **options: Any) -> VersionPredictor:
            return VersionPredictor(ctx, name, **options)

        _FACTORIES[name] = make
    return _FACTORIES[name]


def register_versions() -> list[str]:
    """Register ``version:NAME`` and ``version:SERIES/NAME`` for every version of every series built under the data
    dir (idempotent); return the names registered."""
    from tasks.versions import read_series_records

    names = []
    for rec in read_series_records():
        for v in rec["versions"]:
            for n in (f"{PREFIX}{v['name']}", f"{PREFIX}{rec['name']}/{v['name']}"):
                register(n)(_factory(n))
                names.append(n)
    return names


register_versions()
