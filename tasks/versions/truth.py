"""Truth per version: the series' suites' prompts asked of every version, stored and committed like a suite's truth.

Prompts are cut once, by the suites named in the series (built for the first version, or any target with the same
tokenizer); every version answers the same prompts. A version's truth on a suite lives under
``<data_dir>/versions/<series>/truth/<suite>/<suite version>-<version id>/`` in the format of ``tasks.truth`` (float16
log-probabilities, hash-named files, ``truth.json`` with the sealed commitment binding the sealed prompts, the
version's identity and its precision). ``VersionSuite`` is the suite seen through one version: the same prompts,
vocabulary and background, the version's truth, name ``<suite>@<version>`` (run records and sealed-submission counts
are kept per version). The series record ``<data_dir>/versions/<series>/series.json`` (written last, atomically)
lists the versions with their identities and commitments; ``version:NAME`` predictors are resolved from it.

Checked before any model runs: every version's model exists and shares the suites' tokenizer (``VersionsError``
naming the version otherwise). Checked after a version runs: its vocabulary is the suites' and no log-probability is
NaN or +inf; a failing version stops the build with its name, and the versions before it keep their truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import atomic_write_json, read_json
from tasks.paths import data_dir, sha256_file
from tasks.suite import Suite, load_suite
from tasks.truth import SPLITS, SuiteError, write_truth

from .model import VersionIdentity, load_version, version_identity, version_logprobs
from .spec import SeriesSpec, VersionsError, VersionSpec

SERIES_FORMAT = "logitpred-version-series/1"


def series_dir(name: str) -> Path:
    """``<data_dir>/versions/<name>``: a series' truth and record."""
    return data_dir() / "versions" / name


@dataclass
class VersionSuite(Suite):
    """A suite whose truth is one version's (see the module doc); build with ``version_suite``."""

    folder: Path | None = None

    @property
    def truth_dir(self) -> Path:
        assert self.folder is not None
        return self.folder


def version_suite(series: str, suite: Suite, ident: VersionIdentity) -> VersionSuite:
    """The suite ``suite`` seen through version ``ident`` of series ``series``: its prompts, the version's truth."""
    manifest = {**suite.manifest, "name": f"{suite.name}@{ident.name}", "target": ident.to_dict(),
                "version_of": {"series": series, "suite": suite.name, "target": suite.target}}
    folder = series_dir(series) / "truth" / suite.name / f"{suite.version}-{ident.id}"
    return VersionSuite(suite.path, manifest, folder=folder)


def load_suites(spec: SeriesSpec) -> dict[str, Suite]:
    """The series' suites by name; ``VersionsError`` naming the build command for one that is not built."""
    out = {}
    for name in spec.suites:
        try:
            out[name] = load_suite(name)
        except SuiteError as e:
            raise VersionsError(f"series {spec.name!r}: {e}") from e
    return out


def check_versions(spec: SeriesSpec, suites: dict[str, Suite]) -> dict[str, VersionIdentity]:
    """Every version's identity, after checking that its model exists and uses the suites' tokenizer (one series,
    one tokenizer: the prompts' token ids must mean the same to every version). Loads tokenizers only. Raises
    ``VersionsError`` naming the first bad version."""
    idents = {}
    for v in spec.versions:
        ident, _ = version_identity(v)
        for s in suites.values():
            if ident.tokenizer_sha256 != s.target["tokenizer_sha256"]:
                raise VersionsError(
                    f"version {v.name!r} uses another tokenizer (sha256 {ident.tokenizer_sha256[:16]}) than suite "
                    f"{s.name!r} was cut with ({s.target['tokenizer_sha256'][:16]}, target {s.target['name']}): a "
                    "series keeps one tokenizer and vocabulary; put this model in a series of its own")
        idents[v.name] = ident
    return idents


def _output_vocab(model: Any) -> int:
    """Width of a (possibly quantized) model's output: its config's vocabulary size, or the head's rows."""
    from tasks.forward import output_vocab

    try:
        return output_vocab(model)
    except (AttributeError, TypeError):  # a quantized head's weight is a method, not a tensor
        return int(model.config.get_text_config().vocab_size)


def build_version_truth(series: str, suite: Suite, v: VersionSpec, *, batch_size: int = 8, rebuild: bool = False,
                        on_progress: Callable[[str, int, int], None] | None = None) -> VersionSuite:
    """Compute (or reuse, hash-checked) version ``v``'s truth on both splits of ``suite``; return its
    ``VersionSuite``. Raises ``VersionsError`` naming the version when its model cannot be loaded, its vocabulary is
    not the suite's, it gives NaN/+inf, or it cannot answer a prompt (``TargetError``: beyond its context, not
    causal)."""
    from tasks.target import TargetError

    ident, _ = version_identity(v)
    vs = version_suite(series, suite, ident)
    if not rebuild and vs.has_truth():
        try:
            for split in SPLITS:
                vs.truth_split(split)  # hash check
            return vs
        except SuiteError:
            pass  # unreadable or edited: recompute
    target = load_version(v)
    width = _output_vocab(target.model)
    if width != suite.vocab_size:
        raise VersionsError(f"version {v.name!r} has a vocabulary of {width} tokens, suite {suite.name!r} of "
                            f"{suite.vocab_size}: a series keeps one tokenizer and vocabulary")
    arrays = {}
    for split in SPLITS:
        prompts = suite.prompts(split)
        progress = (lambda n, s=split, t=len(prompts): on_progress(s, n, t)) if on_progress else None
        try:
            logp = version_logprobs(target, prompts, bos_ids=suite.bos_ids, batch_size=batch_size,
                                    on_progress=progress)
        except TargetError as e:  # not causal, a prompt beyond its context, ...: name the version
            raise VersionsError(f"version {v.name!r} cannot answer suite {suite.name!r}: {e}") from e
        if logp.shape != (len(prompts), suite.vocab_size):
            raise VersionsError(f"version {v.name!r} gave log-probabilities of shape {logp.shape}, not "
                                f"({len(prompts)}, {suite.vocab_size}) on suite {suite.name!r}")
        arrays[split] = (logp, np.array([p.next_token_id for p in prompts], dtype=np.int64))
    placement = {"device": "cpu" if v.quantize != "none" else target.placement["device"], "dtype": v.dtype,
                 "quantize": v.quantize}
    base = {"suite": vs.name, "version": suite.version, "target": ident.to_dict(), "placement": placement}
    ids = {s: [p.id for p in suite.prompts(s)] for s in SPLITS}
    try:
        vs._record = write_truth(vs.truth_dir, arrays, base, (suite.path / "sealed.jsonl").read_bytes(), ids)
    except SuiteError as e:
        raise VersionsError(f"version {v.name!r}: {e}") from e
    vs._truth.clear()
    return vs


def write_series_record(spec: SeriesSpec, suites: dict[str, Suite], built: dict[str, dict[str, VersionSuite]]) -> \
        dict[str, Any]:
    """Write ``series.json`` (atomically) for a fully built series; return it. ``built[version][suite]``."""
    import hashlib

    record = {
        "format": SERIES_FORMAT, "name": spec.name, "file": str(spec.path),
        "source_sha256": hashlib.sha256(spec.source.encode()).hexdigest(),
        "suites": [{"name": s.name, "version": s.version, "sealed_prompts_sha256": sha256_file(s.path / "sealed.jsonl"),
                    "target": s.target} for s in suites.values()],
        "versions": [{**v.to_dict(), "identity": next(iter(built[v.name].values())).target,
                      "truth": {n: {"dir": str(vs.truth_dir), "commitment": vs.commitment}
                                for n, vs in built[v.name].items()}} for v in spec.versions],
    }
    atomic_write_json(series_dir(spec.name) / "series.json", record)
    return record


def read_series_records() -> list[dict[str, Any]]:
    """Every built series' record under the data dir (unreadable or foreign files are skipped)."""
    root = data_dir() / "versions"
    out = []
    for path in sorted(root.glob("*/series.json")) if root.is_dir() else []:
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("format") == SERIES_FORMAT:
            out.append(rec)
    return out


def find_version(name: str) -> tuple[str, VersionSpec, dict[str, str]]:
    """``(series, spec, identity)`` of a built version named ``NAME`` or ``SERIES/NAME``. Raises ``VersionsError``
    when no built series has it, or when several series hold different versions of that name."""
    series, _, vname = name.rpartition("/")
    hits = []
    for rec in read_series_records():
        if series and rec["name"] != series:
            continue
        for v in rec["versions"]:
            if v["name"] == vname:
                spec = VersionSpec(v["name"], v["model"], v["dtype"], v["quantize"])
                hits.append((rec["name"], spec, v["identity"]))
    if not hits:
        raise VersionsError(f"no built series has a version {name!r}: build it with `logitpred versions build FILE`")
    if len({h[2]["id"] for h in hits}) > 1:
        raise VersionsError(f"versions named {name!r} differ between series {', '.join(h[0] for h in hits)}: name one "
                            f"as version:SERIES/{vname}")
    return hits[-1]
