"""Reports re-rendered from stored records, never recomputed: ``logitpred report RUN_ID``.

A run's report (``results/<run-id>/report.{md,html}``) is built from its ``summary.json`` (provenance, metrics with
their bootstrap CIs as computed at scoring time) and ``per_prompt.csv`` (plots, worst prompts): no predictor runs, no
truth is read, no bootstrap is redrawn, so the same record always renders the same numbers. Sealed runs are shown on
the holdout release grid (``evals.holdout``). A gate report (``results/gates/<id>/``) re-renders from ``report.json``.

Also here: the Markdown of a gate report and the small HTML shell shared with the leaderboard page.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.io import atomic_write_text, read_json, read_text
from tasks.paths import results_dir

from . import holdout

METRICS = ("kl_nats", "kl_bits", "reverse_kl_nats", "js_bits", "tv", "brier", "top1", "top10_overlap",
           "ce_realized_nats", "target_ce_realized_nats", "target_entropy_nats")
CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table.board{border-collapse:collapse;margin:1em 0;font-size:14px}"
       "table.board td,table.board th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
       "table.board td:first-child,table.board th:first-child{text-align:left}"
       "img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow-x:auto}")


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page (inline CSS; images are data URIs)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def find(run_id: str, root: Path | None = None) -> Path:
    """The folder of a run (``results/<id>``) or gate report (``results/gates/<id>``); unique prefixes work."""
    root = root or results_dir()
    for base in (root, root / "gates"):
        if (base / run_id).is_dir():
            return base / run_id
    hits = [p for base in (root, root / "gates") if base.is_dir() for p in base.iterdir()
            if p.name.startswith(run_id) and ((p / "summary.json").is_file() or (p / "report.json").is_file())]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise FileNotFoundError(f"no run or gate report {run_id!r} under {root}: list them with `ls {root}`")
    raise FileNotFoundError(f"{run_id!r} matches {len(hits)} records ({', '.join(p.name for p in hits[:5])}, ...): "
                            "give more of the id")


def _released(summary: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """The metrics as a report may show them: exact for practice, on the release grid for sealed."""
    metrics = summary["metrics"]
    if summary["split"] != "sealed":
        return metrics
    out = {}
    for name, stats_ in metrics.items():
        step = holdout.step_for(name)
        out[name] = {s: list(holdout.release_interval(*v, step)) for s, v in stats_.items()}
    return out


def run_markdown(summary: dict[str, Any], per_prompt: pd.DataFrame, *, worst: int = 5) -> str:
    s, t, p = summary["suite"], summary["target"], summary["predictor"]
    sealed = summary["split"] == "sealed"
    m = _released(summary)
    env = summary.get("environment", {})
    lines = [
        f"# Run {summary['run_id']}", "",
        f"- suite: **{s['name']}** version {s['version']}, split **{summary['split']}**, commitment `{s['commitment']}`",
        f"- target: {t['name']} (id {t['id']}; weights sha256 `{t.get('weights_sha256', '-')}`, tokenizer sha256 "
        f"`{t.get('tokenizer_sha256', '-')}`)",
        f"- predictor: **{p.get('label') or p['name']}** (`{json.dumps(p, sort_keys=True)}`)"
        + ("" if p.get("approved", True) else " — UNAPPROVED"),
        f"- scored {summary['n_scored']} of {summary['n_prompts']} prompts; {summary['n_rejected']} rejected, "
        f"{len(summary['missing'])} missing",
        f"- predictions file: {summary['predictions_file']['path']} (sha256 `{summary['predictions_file']['sha256']}`)"
        if summary.get("predictions_file") else "- predictions: in process (no file)",
        f"- created {summary['created']} by `{summary['command']}`; bootstrap seed {summary['seed']}",
        "- environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
    ]
    if summary.get("holdout"):
        lines.append(f"- sealed submission #{summary['holdout']['submission']} of this predictor on this suite")
    lines += ["", "| metric | mean [95% CI] | median | p90 | max |", "|---|---|---|---|---|"]
    for name in METRICS:
        if name in m:
            v = m[name]
            lines.append(f"| {name} | {v['mean'][0]:.4f} [{v['mean'][1]:.4f}, {v['mean'][2]:.4f}] | "
                         f"{v['median'][0]:.4f} | {v['p90'][0]:.4f} | {v['max'][0]:.4f} |")
    if sealed:
        lines += ["", "Sealed split: numbers released on the holdout grid (KL step 0.05 nats, rates 0.01; CI bounds "
                  "rounded outward). The exact values stay in the harness-side record."]
    lines += ["", f"Worst {worst} prompts by KL:", "", "| prompt | context tokens | KL (nats) |", "|---|---|---|"]
    for r in per_prompt.nlargest(worst, "kl_nats").itertuples():
        kl = holdout.coarse(r.kl_nats, holdout.step_for("kl_nats")) if sealed else r.kl_nats
        lines.append(f"| {r.prompt_id} | {r.context_tokens} | {kl:.3f} |")
    return "\n".join(lines) + "\n"


def render_run(run_dir: Path) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` (with plots) for a run folder, from its stored files only."""
    from . import plots as P

    summary = read_json(run_dir / "summary.json")
    per_prompt = pd.read_csv(run_dir / "per_prompt.csv")
    md = run_markdown(summary, per_prompt)
    label = summary["predictor"].get("label") or summary["predictor"]["name"]
    tables = {label: per_prompt}
    where = f"{summary['suite']['name']} ({summary['split']})"
    imgs = [P.data_uri(P.png_bytes(fn(tables, title=f"{fn.__name__.replace('_', ' ')}: {where}")))
            for fn in (P.kl_distribution, P.kl_vs_context, P.calibration)]
    body = f"<pre>{html.escape(md)}</pre>" + "".join(f'<img alt="plot" src="{u}">' for u in imgs)
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html"}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["html"], html_page(f"logitpred run {summary['run_id']}", body))
    return paths


def render(run_id: str, root: Path | None = None) -> tuple[str, dict[str, Path]]:
    """Re-render a run or gate report by id; returns (Markdown text, written paths)."""
    folder = find(run_id, root)
    if (folder / "report.json").is_file():
        report = read_json(folder / "report.json")
        md = gate_markdown(report)
        atomic_write_text(folder / "report.md", md)
        return md, {"md": folder / "report.md"}
    paths = render_run(folder)
    return read_text(paths["md"]), paths


def _num(v: float) -> str:
    return f"{v:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _worst_questions(worst: list[dict[str, Any]]) -> list[str]:
    """A trajectory suite's worst whole-continuation questions by absolute log10 error (sealed: on the grid)."""
    if not worst:
        return []
    lines = ["", f"Worst {len(worst)} questions by |log10 error|:", "",
             "| prompt | continuation (kind) | tokens | abs log10 error | prompt ends with | continuation |",
             "|---|---|---|---|---|---|"]
    for w in worst:
        lines.append(f"| {w['prompt_id']} | {w['continuation_id']} ({w['kind']}) | {w['n_tokens']} | "
                     f"{_num(w['abs_error_log10'])} | …{_cell(w['text_end'])} | {_cell(w['continuation'])} |")
    return lines


def gate_markdown(report: dict[str, Any]) -> str:
    """The gate report as Markdown: verdict, per suite each check with CI and threshold, worst prompts, disclaimer."""
    lines = [f"# Gate `{report['gate']}`: **{report['verdict']}**", "",
             f"- run {report['created']} by `{report['command']}`; config sha256 `{report['config_sha256']}`"]
    team = report["config"]["team"]
    lines.append(f"- team rule: **{team.get('rule', 'best-on-practice')}**; members: "
                 + ", ".join(m if isinstance(m, str) else m["name"] + (f" {m['options']}" if m.get("options") else "")
                             for m in team["members"]))
    if report["verdict"] == "REFUSED":
        lines += ["", f"**Refused before running:** {report['reason']}"]
    for s in report["suites"]:
        tgt = s["target"]
        trajectory = s.get("kind") == "trajectory"
        if trajectory:
            sizes = ", ".join(f"{v} {k}" for k, v in s["sizes"].items())
            where = ("; run records " + ", ".join(f"{k.replace('_', ' ')} `{v}`" for k, v in s["run_ids"].items()))
        else:
            sizes, where = f"{s['n']} prompts", f"; run record `{s['run_id']}`"
        lines += ["", f"## {s['suite']} ({s['split']}{', ' + s['role'] if s['role'] else ''}"
                  f"{', trajectory suite' if trajectory else ''}): **{'PASS' if s['passed'] else 'FAIL'}**", "",
                  f"suite version {s['version']}, commitment `{s['commitment']}`; target {tgt['name']} ({tgt['id']}); "
                  f"{sizes}{where}"]
        d = s["team"]
        if d["rule"] == "best-on-practice" and "practice_scores" in d:
            lines.append(f"team prediction: **{d['chosen']}**, chosen before scoring by practice "
                         f"{d['practice_metric'].replace('_', ' ')} ("
                         + ", ".join(f"{k} {_num(v)}" for k, v in d["practice_scores"].items()) + ")"
                         + (" — chosen on the scored split itself, so optimistic" if s["split"] == "practice" else ""))
        elif d["rule"] == "best-on-practice":
            lines.append(f"team prediction: **{d['chosen']}**, chosen before scoring by practice mean KL ("
                         + ", ".join(f"{k} {_num(v)}" for k, v in d["practice_kl_mean"].items()) + ")"
                         + (" — chosen on the scored split itself, so optimistic" if s["split"] == "practice" else ""))
        else:
            lines.append("team prediction: mixture " + ", ".join(f"{w:g} x {k}" for k, w in d["weights"].items())
                         + (" at every step (whole continuations by the chain rule over it)" if trajectory else ""))
        if s["submissions"]:
            lim = report.get("max_submissions")
            lines.append("sealed submissions so far: " + ", ".join(
                f"{k} {v}" + (f" of {lim}" if lim else "") for k, v in s["submissions"].items()))
        lines += ["", "| metric | estimate | 95% CI | compared | threshold | result |", "|---|---|---|---|---|---|"]
        for c in s["checks"]:
            name = (f"{c['metric']} ({c['unit']})" if c.get("kind") == "trajectory"
                    else f"{c['statistic']} {c['metric']}")
            lines.append(f"| {name} | {_num(c['estimate'])} | [{_num(c['ci'][0])}, "
                         f"{_num(c['ci'][1])}] | {c['compared']} {_num(c['bound'])} | {c['op']} {c['threshold']:g} | "
                         f"{'pass' if c['passed'] else '**FAIL**'} |")
        if any(c["step"] for c in s["checks"]):
            lines.append("\nSealed: estimates on the release grid, CI bounds rounded outward; the decision uses the "
                         "released bounds.")
        if s.get("trajectory_kl_per_step"):
            lines.append("\ntrajectory KL per step (nats, mean over samples [95% CI]): " + "; ".join(
                f"{t}: {_num(e)} [{_num(lo)}, {_num(hi)}]" for t, (e, lo, hi) in
                enumerate(s["trajectory_kl_per_step"], 1)))
        if trajectory:
            lines += _worst_questions(s["worst"])
            continue
        lines += ["", f"Worst {len(s['worst'])} prompts by KL:", "", "| prompt | ctx tokens | KL (nats) | ends with |",
                  "|---|---|---|---|"]
        for w in s["worst"]:
            end = w["text_end"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {w['prompt_id']} | {w['context_tokens']} | {_num(w['kl_nats'])} | …{end} |")
    if report.get("rare"):
        from .gate_rare import markdown

        lines += markdown(report["rare"])
    if report.get("gap"):
        from .gate_gap import markdown as gap_markdown

        lines += gap_markdown(report["gap"])
    lines += ["", f"**Verdict: {report['verdict']}.** {report['disclaimer']}", ""]
    return "\n".join(lines)


def write_gate_report(report: dict[str, Any], *, root: Path | None = None) -> dict[str, Any]:
    """Write a gate's ``report.json`` and ``report.md`` under ``results/gates/<stamp>-<gate>/``; returns the report
    with ``report_dir`` set."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    out = (root or results_dir()) / "gates" / f"{stamp}-{report['gate']}"
    out.mkdir(parents=True, exist_ok=False)
    report["report_dir"] = str(out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=_json_default))
    atomic_write_text(out / "report.md", gate_markdown(report))
    return report


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, pd.Timestamp):
        return o.isoformat()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
