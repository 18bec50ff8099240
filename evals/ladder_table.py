"""How far an honest ladder reaches: the approved team's KL on the *target* after each rung.

``evals.ladder`` approves rung k+1 by how well the team approved so far predicts *the rung*. What the ladder is for is
how well that team predicts *the target*: this module answers it with the pre-deployment gate itself. For every level
k (0: the config's level-0 approvers; k: those plus every rung and composite approved up to rung k) it writes an
ordinary gate config (``results/ladder/<name>/level-<k>.gate.yaml``: team rule best-on-practice, the ladder's suites on
their sealed splits, the ladder's thresholds, the default holdout limit and release grid) and runs
``evals.gate.run_gate`` on it, so each figure is a gate report that ``logitpred gate --config`` reproduces, counted in
the holdout ledger like any gate. Nothing here re-implements the team rule, the scoring or the approval check.

``ladder_table(cfg)`` returns one row per level: the rung's parameters and validation loss (nats/token on its
validation windows), its approval verdict with the upper CI bound that decided it (the worst suite's), and per suite
the team's sealed mean KL(target || team) in nats with its 95% bootstrap CI (released on the gate's 0.05-nat grid) and
the member the team rule chose. ``reference_rows`` adds named predictors' latest sealed runs (e.g. the unapproved Gemma
composite) from the leaderboard, exact, for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tasks.io import atomic_write_json, atomic_write_text, read_json

from .ladder import LadderConfig, ladder_path

HOLDOUT = {"max_submissions": 20, "steps": {"kl_nats": 0.05}}


def team_at(cfg: LadderConfig, chain: list[dict[str, Any]], level: int) -> list[dict[str, Any]]:
    """Gate team members at ``level``: the level-0 approvers, then every approved chain step of rungs 1..level.

    Raises ``ValueError`` if the chain has fewer than ``level`` approved rungs (the ladder stopped below it)."""
    from predictors import available
    from predictors.approval import is_level0

    members: list[dict[str, Any]] = [{"name": n} for n in (cfg.approvers or [n for n in available() if is_level0(n)])]
    rungs = [r.name for r in cfg.rungs][:level]
    for rung in rungs:
        steps = [e for e in chain if e["rung"] == rung]
        if not steps or not all(e["approved"] for e in steps):
            raise ValueError(f"rung {rung!r} is not approved in the ladder record: the team stops below level {level}")
        members += [{"name": e["system"]["name"], "options": e["system"]["options"]} for e in steps]
    return members


def level_config(cfg: LadderConfig, chain: list[dict[str, Any]], level: int) -> str:
    """The YAML text of the gate that measures the level-``level`` team on the target (see the module docstring)."""
    return "# written by `logitpred ladder --table` (evals/ladder_table.py): the team approved up to this level\n" + \
        yaml.safe_dump({
            "name": f"ladder-{cfg.name}-level-{level}",
            "team": {"rule": "best-on-practice", "members": team_at(cfg, chain, level)},
            "suites": [{"name": s, "split": "sealed"} for s in cfg.suites],
            "thresholds": cfg.thresholds, "holdout": HOLDOUT, "seed": 0}, sort_keys=False)


def _decided(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The approval check that decided a rung: the suite whose upper CI bound came closest to (or over) its limit."""
    from predictors.approval import find_valid

    checks = entry.get("checks")
    if checks is None and entry.get("record"):  # reused record: its checks are in the registry
        rec = find_valid(entry["record"])
        checks = {s: v.get("checks", []) for s, v in (rec.scores if rec else {}).items()}
    flat = [dict(c, suite=s) for s, cs in (checks or {}).items() for c in cs if c.get("op") == "<="]
    return max(flat, key=lambda c: c["bound"] - c["threshold"]) if flat else None


def ladder_table(cfg: LadderConfig, *, on_stage: Any = None) -> dict[str, Any]:
    """Run one gate per reached level and collect the table (also written as ``<name>-table.json`` and ``.md``).

    Raises ``FileNotFoundError`` when the ladder has not run yet (no record), ``GateConfigError`` /
    ``HoldoutError`` as the gate does (a suite without truth; a sealed split used up)."""
    from .gate import load_config, run_gate

    say = on_stage or (lambda s: None)
    record_path = ladder_path(cfg.name)
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} does not exist: run `logitpred ladder CONFIG` first")
    chain = read_json(record_path)["chain"]
    folder = record_path.parent / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for level in range(len(cfg.rungs) + 1):
        rung = cfg.rungs[level - 1].name if level else None
        entry = next((e for e in chain if e["step"] == "rung" and e["rung"] == rung), {}) if rung else {}
        training = entry.get("training") or {}
        row = {"level": level, "rung": rung, "parameters": training.get("parameters"),
               "valid_loss": training.get("final_valid_loss"), "train_seconds": training.get("seconds"),
               "approved": entry.get("approved") if rung else None, "decided_by": _decided(entry) if rung else None}
        try:
            text = level_config(cfg, chain, level)
        except ValueError as e:  # the ladder stopped here (a failed rung keeps its row) or has not reached it
            say(f"level {level}: {e}")
            if entry:
                rows.append(row | {"gate": None, "gate_report": None, "verdict": None, "suites": {}})
            break
        path = folder / f"level-{level}.gate.yaml"
        atomic_write_text(path, text)
        say(f"level {level}: gate {path}")
        report = run_gate(load_config(path))
        suites = {}
        for s in report["suites"]:
            kl = next(c for c in s["checks"] if c["metric"] == "kl_nats")
            suites[s["suite"]] = {"kl_nats": kl["estimate"], "ci": kl["ci"], "chosen": s["team"].get("chosen"),
                                  "run_id": s["run_id"]}
        rows.append(row | {"gate": str(path), "gate_report": report["report_dir"], "verdict": report["verdict"],
                           "suites": suites})
    table = {"format": "logitpred-ladder-table/1", "ladder": cfg.name, "record": str(record_path), "rows": rows}
    atomic_write_json(record_path.with_name(f"{cfg.name}-table.json"), table)
    atomic_write_text(record_path.with_name(f"{cfg.name}-table.md"), to_markdown(table))
    return table


def reference_rows(labels: list[str], suites: list[str]) -> list[dict[str, Any]]:
    """Latest sealed runs of named predictors, per suite, released as the leaderboard releases them (KL on the
    holdout grid, CI bounds rounded outward: this table is printed and published); absent ones are skipped."""
    from .leaderboard import leaderboards

    df = leaderboards(suites, "sealed")
    rows = []
    for label in labels:
        part = df[df["predictor"] == label]
        if len(part):
            rows.append({"predictor": label, "approved": bool(part["approved"].iloc[0]), "suites": {
                r.suite: {"kl_nats": r.kl_mean, "ci": [r.kl_ci_low, r.kl_ci_high], "run_id": r.run_id}
                for r in part.itertuples()}})
    return rows


def _kl(cell: dict[str, Any] | None) -> str:
    return "-" if not cell else f"{cell['kl_nats']:.2f} [{cell['ci'][0]:.2f}, {cell['ci'][1]:.2f}]"


def to_markdown(table: dict[str, Any], reference: list[dict[str, Any]] | None = None) -> str:
    """The table as Markdown: one row per level, then the reference rows."""
    rows = table["rows"]
    suites = next((list(r["suites"]) for r in rows if r["suites"]), [])
    head = ["level", "rung", "parameters", "valid loss (nats/token)", "approval (worst suite: upper bound vs limit)",
            *(f"team KL on target, sealed {s}" for s in suites), "chosen on practice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r["decided_by"]
        verdict = "level 0 (corpus statistics)" if r["rung"] is None else (
            ("approved" if r["approved"] else "**not approved**")
            + (f" ({d['suite']}: {d['bound']:.3f} {'<=' if d['bound'] <= d['threshold'] else '>'} {d['threshold']})"
               if d else ""))
        chosen = "; ".join(f"{s}: {c['chosen']}" for s, c in r["suites"].items())
        lines.append("| " + " | ".join([
            str(r["level"]), r["rung"] or "-", f"{r['parameters']:,}" if r["parameters"] else "-",
            f"{r['valid_loss']:.3f}" if r["valid_loss"] is not None else "-", verdict,
            *(_kl(r["suites"].get(s)) for s in suites), _shorten(chosen)]) + " |")
    for ref in reference or []:
        lines.append("| " + " | ".join([
            "-", ref["predictor"] + (" (approved)" if ref["approved"] else " (unapproved)"), "-", "-",
            "reference (leaderboard)",
            *(_kl(ref["suites"].get(s)) for s in suites), "-"]) + " |")
    return "\n".join(lines) + "\n"


def _shorten(text: str) -> str:
    """Member labels of rungs carry their folder path; keep the helper's folder name only."""
    import re

    text = re.sub(r"model\(path=[^)]*/helpers/([^)/]+)\)", r"\1", text)
    return re.sub(r"model:\{\"path\": \"[^\"]*/helpers/([^\"/]+)\"\}", r"\1", text)


def load_table(cfg: LadderConfig) -> dict[str, Any]:
    path = ladder_path(cfg.name).with_name(f"{cfg.name}-table.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `logitpred ladder CONFIG --table` first")
    return json.loads(Path(path).read_text())
