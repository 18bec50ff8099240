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

``create`` is the only way code builds a predictor, and it applies the approval rule (``predictors.approval``): a
system that is neither level 0 nor approved is refused unless ``allow_unapproved=True`` (an exploratory run, whose
results must be marked unapproved; ``create_with_approval`` returns the metadata to mark them with).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tasks.vocab import Vocabulary

from .format import Prediction

BUILTIN_MODULES = ("predictors.baselines", "predictors.ngram", "predictors.suffix", "predictors.mixture", "predictors.model", "predictors.composite", "predictors.version")  # imported on first registry use; heavy ones import lazily inside
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
# The system whose factory is running (name and approval metadata): what it builds inside is judged by its approval.
_BUILDING: ContextVar[dict[str, Any] | None] = ContextVar("logitpred_building", default=None)


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


def unknown_message(name: str) -> str:
    """The error for a predictor name that is not registered: the known names, and how to use a trained helper of
    that name (``logitpred helpers train --name NAME`` and the ladder's rungs save helpers, which are not registered
    predictors of their own). Never raises: a name that cannot be a folder name gets the plain message."""
    import json
    import shlex

    from .model import HelperError, trained_helper_dir
    from .train_helper import MANIFEST

    msg = f"unknown predictor {name!r}; available: {', '.join(available())}"
    try:  # the one rule for helper names (trained_helper_dir): '..', '/', too long are no helper
        helper = (trained_helper_dir(name) / MANIFEST).is_file()
    except HelperError:
        helper = False
    if helper:
        member = shlex.quote("tiny-helper:" + json.dumps({"name": name}))
        msg += (f". {name!r} is a trained helper: use it as `-p tiny-helper -O name={shlex.quote(name)}` (as a "
                f"composite's member: {member})")
    return msg


def _require_known(name: str, options: dict[str, Any]) -> None:
    """``KeyError`` listing the known predictors if ``name`` or a member named in its options (recursively) is not
    registered: an unknown name is a bad request, reported as such before the approval check."""
    from .approval import members_of

    if name not in _REGISTRY:
        raise KeyError(unknown_message(name))
    for member, member_options in members_of(options):
        _require_known(member, member_options)


def create_with_approval(name: str, ctx: PredictorContext, options: dict[str, Any] | None = None, *,
                         allow_unapproved: bool = False) -> tuple[Predictor, dict[str, Any]]:
    """Check approval (``predictors.approval.require_approved``), then instantiate: ``(predictor, approval metadata)``.

    Unknown names, the system's or a member's, raise ``KeyError`` listing the known ones (before any check). An
    unapproved system raises ``ApprovalError`` (a ``ValueError``) before its factory runs, unless
    ``allow_unapproved``: then it runs exploratory and the metadata says so (``approved`` false, ``exploratory``
    true); merge it into every result's predictor entry.

    What a predictor builds inside its factory (a composite's or mixture's members) is covered by the outer check
    when the outer system was approved by a record (its identity includes its members') or runs exploratory; under a
    level-0 outer system (a mixture of corpus statistics) each member is checked itself, so a predictor that claims
    level 0 cannot build an unapproved helper.
    """
    from .approval import require_approved

    _load_all()
    options = dict(options or {})
    _require_known(name, options)
    outer = _BUILDING.get()
    if outer is not None and outer["meta"]["level"] != 0:
        meta = {**outer["meta"], "member_of": outer["name"]}
    else:
        meta = require_approved(name, options, allow_unapproved=allow_unapproved)
    token = _BUILDING.set({"name": name, "meta": meta})
    try:
        predictor = _REGISTRY[name](ctx, **options)
    finally:
        _BUILDING.reset(token)
    try:
        predictor.approval_meta = meta  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # slotted or frozen predictors: the returned metadata is the record
        pass
    return predictor, meta


def create(name: str, ctx: PredictorContext, /, *, allow_unapproved: bool = False, **options: Any) -> Predictor:
    """Instantiate a registered predictor, after the one approval check; unknown names get the list of known ones.

    Refuses (``predictors.approval.ApprovalError``) a system that is neither level 0 nor approved, unless
    ``allow_unapproved=True`` (exploratory: ``predictor.approval_meta`` then says ``approved: False``). See
    ``create_with_approval``, which also returns the approval metadata.
    """
    return create_with_approval(name, ctx, options, allow_unapproved=allow_unapproved)[0]
