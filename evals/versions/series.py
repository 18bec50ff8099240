"""Building a version series' truth and writing its report (``logitpred versions build | report``).

``build_series``: check the whole series first (the file, the suites, every version's model and tokenizer), then
compute each version's truth on each suite (``tasks.versions.build_version_truth``; cached truth is reused
hash-checked), write the series record and register the ``version:NAME`` predictors. A version that fails stops the
build with its name; nothing is written to the approval registry by a build.

``series_report``: per consecutive pair the drift on each suite and split; per version the gate's verdict and the
team's KL (when the series names a gate config); per pair ``version:v[n]`` against the baseline on v[n+1]. Written to
``results/versions/<stamp>-<series>/report.json`` and ``report.md``; every scoring also leaves its own run record
under ``results/``. The disclaimer of the gate applies: one eval among many, not a proof of safety.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.io import atomic_write_json, atomic_write_text
from tasks.paths import results_dir
from tasks.truth import SPLITS
from tasks.versions import (
    SeriesSpec,
    VersionsError,
    build_version_truth,
    check_versions,
    load_suites,
    version_suite,
    write_series_record,
)

from .. import records
from .measure import compare_previous, drift, gate_version

REPORT_FORMAT = "logitpred-versions-report/1"


def build_series(spec: SeriesSpec, *, batch_size: int = 8, rebuild: bool = False,
                 on_stage: Callable[[str], None] | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Compute (or reuse) every version's truth on every suite of the series; write and return the series record.
    Raises ``VersionsError`` naming the version for a missing model, another tokenizer or vocabulary, a model that
    cannot be loaded or gives NaN/+inf; ``SuiteError``-derived ``VersionsError`` for a suite that is not built."""
    from predictors.version import register_versions

    say = on_stage or (lambda s: None)
    suites = load_suites(spec)
    check_versions(spec, suites)  # every version's file and tokenizer, before any model runs
    built: dict[str, dict[str, Any]] = {}
    for v in spec.versions:
        built[v.name] = {}
        for name, s in suites.items():
            say(f"version {v.name}: truth on {name}")
            built[v.name][name] = build_version_truth(spec.name, s, v, batch_size=batch_size, rebuild=rebuild,
                                                      on_progress=on_progress)
    record = write_series_record(spec, suites, built)
    register_versions()
    return record


def load_built(spec: SeriesSpec) -> dict[str, dict[str, Any]]:
    """``{version: {suite: VersionSuite}}`` of a built series (truth present); ``VersionsError`` naming the first
    version without truth and the build command."""
    suites = load_suites(spec)
    idents = check_versions(spec, suites)
    out: dict[str, dict[str, Any]] = {}
    for v in spec.versions:
        out[v.name] = {}
        for name, s in suites.items():
            vs = version_suite(spec.name, s, idents[v.name])
            if not vs.has_truth():
                raise VersionsError(f"version {v.name!r} has no truth on suite {name!r} yet: run `logitpred versions "
                                    f"build {spec.path}`")
            out[v.name][name] = vs
    from predictors.version import register_versions

    register_versions()
    return out


def series_report(spec: SeriesSpec, *, allow_unapproved: bool = False, seed: int = 0, gate: bool = True,
                  compare: bool = True, on_stage: Callable[[str], None] | None = None,
                  root: Path | None = None) -> dict[str, Any]:
    """Measure a built series (see the module doc) and write its report; return the report dict (with ``dir``).
    Raises ``VersionsError`` for a series not built, ``GateConfigError`` for a bad gate config or an unapproved
    team member, ``HoldoutError``-derived refusals are recorded per version (verdict REFUSED)."""
    from predictors.approval import is_level0

    from ..gate import DISCLAIMER, load_config
    from .measure import check_team

    say = on_stage or (lambda s: None)
    if compare and not is_level0(spec.baseline):
        raise VersionsError(f"{spec.path}: baseline: {spec.baseline!r} is not a level-0 predictor (corpus statistics, "
                            "e.g. ngram, mixture, unigram)")
    built = load_built(spec)
    cfg = load_config(spec.gate) if (gate and spec.gate) else None
    if cfg is not None:
        check_team(cfg)
    names = [v.name for v in spec.versions]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "series": spec.name, "file": str(spec.path), "created": datetime.now(UTC).isoformat(),
        "source_sha256": hashlib.sha256(spec.source.encode()).hexdigest(), "command": records.command_line(),
        "environment": records.environment(), "disclaimer": DISCLAIMER, "baseline": spec.baseline,
        "gate": str(spec.gate) if cfg else None,
        "versions": [{**v.to_dict(), "identity": next(iter(built[v.name].values())).target,
                      "commitments": {s: vs.commitment for s, vs in built[v.name].items()}} for v in spec.versions],
        "drift": [], "gates": {}, "previous_as_predictor": [],
    }
    for a, b in zip(names, names[1:], strict=False):
        for s in spec.suites:
            for split in SPLITS:
                say(f"drift {a} -> {b} on {s}/{split}")
                report["drift"].append({"from": a, "to": b, "suite": s, "split": split,
                                        **drift(built[a][s], built[b][s], split, seed=seed)})
    if cfg is not None:
        for n in names:
            say(f"gate {cfg.name} on version {n}")
            report["gates"][n] = gate_version(cfg, built[n])
    if compare:
        for a, b in zip(names, names[1:], strict=False):
            for s in spec.suites:
                say(f"version:{a} vs {spec.baseline} predicting {b} on {s}")
                report["previous_as_predictor"].append(
                    {"from": a, "to": b, "suite": s,
                     **compare_previous(a, built[b][s], spec.baseline, allow_unapproved=allow_unapproved, seed=seed)})
    return write_report(report, root=root)


def _ci(x: list[float], digits: int = 3) -> str:
    return f"{x[0]:.{digits}f} [{x[1]:.{digits}f}, {x[2]:.{digits}f}]"


def render(report: dict[str, Any]) -> str:
    """The Markdown of a series report."""
    lines = [f"# Version series {report['series']}", "", f"File: `{report['file']}`; created {report['created'][:19]}",
             "", "| version | model | dtype | quantize | id |", "|---|---|---|---|---|"]
    for v in report["versions"]:
        lines.append(f"| {v['name']} | {Path(v['model']).name} | {v['dtype']} | {v['quantize']} | {v['identity']['id']} |")
    lines += ["", "## Drift KL(v[n+1] || v[n]) (nats, 95% bootstrap CI over prompts)", "",
              "| pair | suite | split | n | mean KL | max KL | top-1 agreement |", "|---|---|---|---|---|---|---|"]
    for d in report["drift"]:
        lines.append(f"| {d['from']} -> {d['to']} | {d['suite']} | {d['split']} | {d['n']} | {_ci(d['kl_nats'], 4)} | "
                     f"{d['kl_max']:.4f} | {_ci(d['top1_agreement'], 2)} |")
    if report["gates"]:
        lines += ["", f"## Gate per version ({report['gate']})", "",
                  "| version | verdict | suite | split | team member used | team KL (nats) | checks |",
                  "|---|---|---|---|---|---|---|"]
        for n, g in report["gates"].items():
            if not g["suites"]:
                lines.append(f"| {n} | {g['verdict']} | | | | | {g.get('reason', '')} |")
            for s in g["suites"]:
                checks = "; ".join(f"{c['metric']} {c['compared']} {c['bound']:.3g} {c['op']} {c['threshold']:g}: "
                                   f"{'pass' if c['passed'] else 'FAIL'}" for c in s["checks"])
                lines.append(f"| {n} | {g['verdict']} | {s['suite']} | {s['split']} | "
                             f"{s['team'].get('chosen', s['team'].get('rule'))} | {_ci(s['team_kl_nats'], 2)} | {checks} |")
    if report["previous_as_predictor"]:
        lines += ["", f"## The previous version as a predictor of the next (against {report['baseline']})", "",
                  "| predictor | predicts | suite | version KL | baseline KL | gain (baseline - version) | p | approved |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report["previous_as_predictor"]:
            if "refused" in c:
                lines.append(f"| {c['version']} | {c['to']} | {c['suite']} | refused: not approved (`logitpred "
                             f"versions approve FILE {c['from']}`, or --allow-unapproved) | | | | no |")
                continue
            lines.append(f"| {c['version']} | {c['to']} | {c['suite']} | {_ci(c['version_kl'], 2)} | "
                         f"{_ci(c['baseline_kl'], 2)} | {_ci(c['gain_kl'], 2)} | {c['p_wilcoxon']:.2g} | "
                         f"{'yes' if c['approved'] else 'no (exploratory)'} |")
    lines += ["", "Sealed scores of predictors are released on the holdout grid (0.05 nats); drift compares truths "
              "and is exact.", "", f"> {report['disclaimer']}", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], *, root: Path | None = None) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` under ``<root or results>/versions/<stamp>-<series>/``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = (root or results_dir()) / "versions" / f"{stamp}-{report['series']}"
    folder.mkdir(parents=True, exist_ok=True)
    report["dir"] = str(folder)
    atomic_write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.md", render(report))
    return report
