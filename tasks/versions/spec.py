"""A version series: an ordered list of versions of one target model, read from a YAML file and checked in full.

Format (``logitpred-versions``, key ``version: 1``)::

    version: 1
    name: smollm2-quant            # names the series' data folder and reports
    suites: [wiki]                 # built suites: their prompts are asked of every version
    gate: gate.yaml                # optional: team, rule and thresholds of the verdict per version (relative to this file)
    baseline: ngram                # optional: the corpus statistics the previous version is compared with (level 0)
    versions:                      # in order: drift is KL(v[n+1] || v[n])
      - {name: float32, model: default}                      # model: "default" (SmolLM2) or a .gguf file / HF folder
      - {name: bfloat16, model: default, dtype: bfloat16}    # dtype: float32 | bfloat16 | float16
      - {name: int8, preset: "smollm2:int8"}                 # presets: smollm2:float32 | smollm2:bfloat16 | smollm2:int8

A version is a model (a local GGUF file or Hugging Face folder, relative paths from the YAML's folder), the precision
it runs in, and an optional quantization (``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every
``nn.Linear`` to int8 weights, activations quantized per tensor at run time). Nothing is downloaded.

Every problem raises ``VersionsError`` naming the file, the key and, inside ``versions:``, the version; nothing is
loaded or written before the whole file is valid. Whether a version's model exists, loads and shares the suites'
tokenizer is checked when the series is built (``tasks.versions.truth``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
QUANTIZATIONS = ("none", "int8-dynamic")
PRESETS: dict[str, dict[str, str]] = {
    "smollm2:float32": {"model": "default", "dtype": "float32", "quantize": "none"},
    "smollm2:bfloat16": {"model": "default", "dtype": "bfloat16", "quantize": "none"},
    "smollm2:int8": {"model": "default", "dtype": "float32", "quantize": "int8-dynamic"},
}
NAME = re.compile(r"[A-Za-z0-9_.-]+")


class VersionsError(ValueError):
    """A version series is invalid, or one of its versions cannot be used; the message names the version."""


@dataclass(frozen=True)
class VersionSpec:
    """One version: ``name``, ``model`` ("default" or an absolute path), ``dtype`` and ``quantize``."""

    name: str
    model: str
    dtype: str = "float32"
    quantize: str = "none"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "model": self.model, "dtype": self.dtype, "quantize": self.quantize}


@dataclass(frozen=True)
class SeriesSpec:
    """A checked series: ``name``, ``suites`` (built suite names), ``versions`` (in order), optional ``gate`` config
    path and ``baseline`` predictor, and ``source`` (the file's text, hashed into reports)."""

    name: str
    suites: tuple[str, ...]
    versions: tuple[VersionSpec, ...]
    gate: Path | None
    baseline: str
    source: str
    path: Path

    def version(self, name: str) -> VersionSpec:
        """The version called ``name``; ``VersionsError`` listing the names otherwise."""
        for v in self.versions:
            if v.name == name:
                return v
        raise VersionsError(f"series {self.name!r} has no version {name!r}; its versions: "
                            f"{', '.join(v.name for v in self.versions)}")


def _keys(obj: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> None:
    if not isinstance(obj, dict):
        raise VersionsError(f"{where}: expected a mapping, got {type(obj).__name__}")
    if unknown := set(obj) - allowed:
        raise VersionsError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if missing := required - set(obj):
        raise VersionsError(f"{where}: missing key(s) {sorted(missing)}")


def _version(obj: Any, i: int, where: str, folder: Path) -> VersionSpec:
    from tasks.device import DTYPES

    at = f"{where}: versions[{i}]"
    _keys(obj, at, {"name", "model", "preset", "dtype", "quantize"}, {"name"})
    name = obj["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise VersionsError(f"{at}.name: {name!r} must be letters, digits, '_', '.', '-'")
    at = f"{where}: version {name!r}"
    fields: dict[str, Any] = {}
    if "preset" in obj:
        if obj["preset"] not in PRESETS:
            raise VersionsError(f"{at}.preset: {obj['preset']!r} is not one of {', '.join(PRESETS)}")
        if set(obj) & {"model", "dtype", "quantize"}:
            raise VersionsError(f"{at}: give either preset or model/dtype/quantize, not both")
        fields = dict(PRESETS[obj["preset"]])
    elif "model" not in obj:
        raise VersionsError(f"{at}: give model (\"default\", a .gguf file or a model folder) or preset")
    else:
        fields = {"model": obj["model"], "dtype": obj.get("dtype", "float32"), "quantize": obj.get("quantize", "none")}
    model = fields["model"]
    if not isinstance(model, str) or not model:
        raise VersionsError(f"{at}.model: {model!r} must be \"default\" or a path")
    if model != "default":
        model = str((folder / Path(model).expanduser()).resolve())
    if fields["dtype"] not in DTYPES:
        raise VersionsError(f"{at}.dtype: {fields['dtype']!r} is not one of {', '.join(DTYPES)}")
    if fields["quantize"] not in QUANTIZATIONS:
        raise VersionsError(f"{at}.quantize: {fields['quantize']!r} is not one of {', '.join(QUANTIZATIONS)}")
    if fields["quantize"] == "int8-dynamic" and fields["dtype"] != "float32":
        raise VersionsError(f"{at}: int8-dynamic quantization runs float32 activations: leave dtype at float32")
    return VersionSpec(name, model, fields["dtype"], fields["quantize"])


def load_series(path: str | Path) -> SeriesSpec:
    """Parse and check a version series file. Raises ``VersionsError`` (the file, key and version named) for a
    missing or unreadable file, bad YAML, a key given twice, an unknown or missing key, fewer than two versions, a
    version name given twice, an unknown preset, dtype or quantization, a missing gate config, or a bad name."""
    import yaml

    from tasks.io import DuplicateKeyError, load_yaml, read_text

    path = Path(path)
    if not path.is_file():
        raise VersionsError(f"{path} does not exist (see versions.yaml at the repository root)")
    try:
        text = read_text(path)
        raw = load_yaml(text, source=str(path))
    except UnicodeDecodeError as e:
        raise VersionsError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from e
    except (DuplicateKeyError, yaml.YAMLError) as e:
        raise VersionsError(f"{path} is not valid YAML: {e}") from e
    where = str(path)
    _keys(raw, where, {"version", "name", "suites", "gate", "baseline", "versions"}, {"version", "name", "suites",
                                                                                      "versions"})
    if raw["version"] != FORMAT_VERSION:
        raise VersionsError(f"{where}: version: {raw['version']!r}; this harness reads version {FORMAT_VERSION}")
    name = raw["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise VersionsError(f"{where}: name: {name!r} must be letters, digits, '_', '.', '-'")
    suites = raw["suites"]
    if (not isinstance(suites, list) or not suites
            or not all(isinstance(s, str) and NAME.fullmatch(s) for s in suites) or len(set(suites)) != len(suites)):
        raise VersionsError(f"{where}: suites: list built suite names once each, e.g. [wiki], got {suites!r}")
    items = raw["versions"]
    if not isinstance(items, list) or len(items) < 2:
        raise VersionsError(f"{where}: versions: list at least two versions in order (drift compares neighbours)")
    folder = path.resolve().parent
    versions = tuple(_version(v, i, where, folder) for i, v in enumerate(items))
    names = [v.name for v in versions]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise VersionsError(f"{where}: version {dup[0]!r} is listed twice: give each version its own name")
    gate = raw.get("gate")
    if gate is not None:
        if not isinstance(gate, str):
            raise VersionsError(f"{where}: gate: {gate!r} must be the path of a gate config")
        gate = (folder / gate).resolve()
        if not gate.is_file():
            raise VersionsError(f"{where}: gate: {gate} does not exist (see gate.yaml at the repository root)")
    baseline = raw.get("baseline", "ngram")
    if not isinstance(baseline, str) or not baseline:
        raise VersionsError(f"{where}: baseline: {baseline!r} must name a level-0 predictor, e.g. ngram")
    return SeriesSpec(name, tuple(suites), versions, gate, baseline, text, path.resolve())
