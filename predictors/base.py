"""The Predictor protocol, what a predictor may see, and the registry of predictors by name.

A predictor maps a batch of prompts to predictions (``predictors.format.Prediction``). It receives prompt text and token
ids (``PromptView``) and a ``PredictorContext`` holding what the rules allow: the target's vocabulary and tokenizer,
the suite's corpus name and split seed (to read the *train* part), the train-part unigram, and the practice split's
truth (practice feedback is allowed). It never receives the target model, sealed truth, the realized next token, or
another participant's predictions.

New predictors plug in without touching the core::

    from predictors import register

    @register("my-predictor")
    def make(ctx, **options):
        return MyPredictor(ctx, **options)

Third-party packages can expose factories in the ``logitpred.predictors`` entry-point group instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tasks.vocab import Vocabulary

from .format import Prediction

BUILTIN_MODULES = ("predictors.baselines", "predictors.ngram", "predictors.suffix", "predictors.mixture", "predictors.model", "predictors.composite")  # imported on first registry use; heavy ones import lazily inside
ENTRY_POINT_GROUP = "logitpred.predictors"


@dataclass(frozen=True)
class PromptView:
    """What a predictor sees of a prompt."""

    id: str
    text: str
    token_ids: tuple[int, ...]


@dataclass
class PredictorContext:
    suite: str
    vocab_size: int
    vocabulary: Vocabulary
    background: np.ndarray  # train-part unigram, float64
    bos_ids: list[int]
    tokenizer_dir: Path
    tokenizer_sha256: str
    corpus: str
    seed: int
    heldout_fraction: float
    practice_truth: Callable[[], tuple[list[str], np.ndarray]] | None = None  # (prompt ids, log-probs)
    practice_prompts: Callable[[], list[PromptView]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    target_weights_sha256: str = ""  # identity only, never a path: lets helper predictors refuse to run the target

    @classmethod
    def from_suite(cls, suite: Any) -> PredictorContext:
        """The allowed view of a ``tasks.Suite``: no sealed truth, no target weights."""
        from tasks.suite import truth_loader

        cfg = suite.manifest["config"]
        # The closures hold the practice truth file's path and hash and the practice prompt views, never the suite
        # object (whose truth_split("sealed") would be one attribute away).
        load_practice = truth_loader(suite, "practice")
        views = [view(p) for p in suite.prompts("practice")]
        cache: list[np.ndarray] = []

        def practice_truth() -> tuple[list[str], np.ndarray]:
            if not cache:
                cache.append(load_practice()[0])
            return [v.id for v in views], cache[0]

        def practice_prompts() -> list[PromptView]:
            return list(views)

        return cls(suite.name, suite.vocab_size, suite.vocabulary, suite.background, suite.bos_ids,
                   suite.path / "tokenizer", suite.target["tokenizer_sha256"], cfg["corpus"], cfg["seed"],
                   cfg["heldout_fraction"], practice_truth, practice_prompts,
                   target_weights_sha256=suite.target.get("weights_sha256", ""))

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir)


def view(prompt: Any) -> PromptView:
    """Strip a suite prompt down to what a predictor may see."""
    return PromptView(prompt.id, prompt.text, tuple(prompt.token_ids))


@runtime_checkable
class Predictor(Protocol):
    name: str

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        """One prediction per prompt, in order."""
        ...


Factory = Callable[..., Predictor]
_REGISTRY: dict[str, Factory] = {}
_loaded = False


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(ctx: PredictorContext, **options) -> Predictor`` under ``name``."""

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"predictor name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        register(ep.name)(ep.load())


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def create(name: str, ctx: PredictorContext, **options: Any) -> Predictor:
    """Instantiate a registered predictor; unknown names get the list of known ones."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown predictor {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](ctx, **options)
