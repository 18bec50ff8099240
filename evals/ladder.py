"""A ladder of project-trained helpers of growing size, each approved by the team approved before it.

``run_ladder(config)`` goes through the rungs of a ladder config (YAML, see ``docs/ladder.md``) in order. Each rung is
a helper trained by ``predictors.train_helper`` (saved as the helper ``<ladder>-<rung>``, with checkpoints on the
config's schedule; a rung already trained with the same config is kept, a killed one resumes from its checkpoint),
then approved by ``evals.approve.approve`` -- the one approval rule, not re-implemented here -- with the team approved
so far as approvers: the level-0 predictors the config names, every rung approved before it, and the composites of
those rungs the config asks for, each approved as a composite itself before it joins the team. So rung 1 is approved at
level 1 by level 0, rung k+1 at level k+1 by a team whose best member on practice is usually rung k. The ladder stops
at the first rung (or composite) that fails: nothing later may be approved by a team that lacks it.

The chain is written to ``results/ladder/<ladder>.json`` after every step (atomically): per step the helper, its
training summary, the approval record's key and level, the approving team, the approver chosen per suite, the evidence
runs and the approval report. Left out: training rungs in parallel, and GPUs (``train_helper`` runs on the CPU).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.io import atomic_write_json, read_json, read_yaml
from tasks.paths import results_dir

FORMAT = "logitpred-ladder/1"
TOP_KEYS = {"name", "suites", "thresholds", "approvers", "train", "rungs", "threads", "checkpoint_every", "composites"}


class LadderConfigError(ValueError):
    """The ladder config is invalid; the message names the key and how to fix it (exit code 2)."""


@dataclass(frozen=True)
class Rung:
    name: str
    train: dict[str, Any]  # TrainConfig fields of this rung (the config's ``train`` with the rung's own on top)


@dataclass(frozen=True)
class LadderConfig:
    name: str
    suites: tuple[str, ...]
    thresholds: dict[str, Any]
    approvers: tuple[str, ...] | None  # level-0 team; None: every level-0 predictor
    rungs: tuple[Rung, ...]
    threads: int = 1
    checkpoint_every: int = 0
    composites: tuple[dict[str, Any], ...] = ()  # e.g. {"name": "mixture", "members": ["ngram"]}: + each rung
    source: str = ""


def load_ladder(path: Path) -> LadderConfig:
    """Parse and check a ladder config; every problem raises ``LadderConfigError`` naming the key."""
    from predictors.model import HELPER_NAME
    from predictors.train_helper import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise LadderConfigError(f"{path} does not exist (see docs/ladder.md for an example)")
    try:
        raw = read_yaml(path)
    except ValueError as e:
        raise LadderConfigError(f"{path}: {e}") from e
    if not isinstance(raw, dict):
        raise LadderConfigError(f"{path}: the ladder config must be a mapping with name, suites, rungs")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise LadderConfigError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise LadderConfigError(f"{path}: name must be letters, digits, - or _ (got {name!r}); rungs are saved as "
                                "the helpers <name>-<rung>")
    train_keys = {f.name for f in fields(TrainConfig)}

    def train_part(obj: Any, where: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise LadderConfigError(f"{path}: {where} must be a mapping of training settings")
        bad = set(obj) - train_keys
        if bad:
            raise LadderConfigError(f"{path}: {where}: unknown training setting(s) {sorted(bad)}; known: "
                                    f"{sorted(train_keys)}")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}

    base = train_part(raw.get("train") or {}, "train")
    rungs_raw = raw.get("rungs")
    if not isinstance(rungs_raw, list) or len(rungs_raw) < 2:
        raise LadderConfigError(f"{path}: rungs must list at least two rungs, e.g. - {{name: 5m, hidden: 96, "
                                "layers: 2}")
    rungs = []
    for i, r in enumerate(rungs_raw):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"]:
            raise LadderConfigError(f"{path}: rungs[{i}] needs a name (e.g. name: 5m)")
        if not HELPER_NAME.fullmatch(f"{name}-{r['name']}"):  # the rung's helper folder, checked before any training
            raise LadderConfigError(f"{path}: rungs[{i}].name {r['name'][:40]!r} cannot name the helper folder "
                                    f"{name}-<rung>: use letters, digits, '.', '_' or '-' (e.g. name: 5m)")
        own = train_part({k: v for k, v in r.items() if k != "name"}, f"rungs[{i}]")
        merged = {**base, **own}
        merged.setdefault("heads", max(1, int(merged.get("hidden", TrainConfig.hidden)) // 32))
        rungs.append(Rung(r["name"], merged))
    if len({r.name for r in rungs}) != len(rungs):
        raise LadderConfigError(f"{path}: rung names repeat: {[r.name for r in rungs]}")
    suites = raw.get("suites") or ["wiki", "news", "sotu"]
    approvers = raw.get("approvers")
    composites = raw.get("composites") or []
    if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
        raise LadderConfigError(f"{path}: suites must be a list of suite names")
    if approvers is not None and (not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers)):
        raise LadderConfigError(f"{path}: approvers must be a list of level-0 predictor names")
    if not isinstance(composites, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                   and isinstance(c.get("members", []), list) for c in composites):
        raise LadderConfigError(f"{path}: composites must be a list of {{name: mixture, members: [ngram]}}")
    for key in ("threads", "checkpoint_every"):
        if key in raw and (not isinstance(raw[key], int) or raw[key] < (1 if key == "threads" else 0)):
            raise LadderConfigError(f"{path}: {key} must be an integer >= {1 if key == 'threads' else 0}")
    return LadderConfig(name, tuple(suites), dict(raw.get("thresholds") or {"kl_nats": {"max": 3.0}}),
                        tuple(approvers) if approvers else None, tuple(rungs), int(raw.get("threads", 1)),
                        int(raw.get("checkpoint_every", 0)), tuple(composites), str(path))


def helper_spec(ladder: str, rung: str) -> tuple[str, dict[str, Any]]:
    """The predictor (name, options) of a rung: ``model`` at the trained helper ``<ladder>-<rung>``'s folder (not
    ``tiny-helper`` with ``name``: ``evals.approve.system_truth`` passes options as keywords beside ``name``)."""
    from predictors.model import trained_helper_dir

    return "model", {"path": str(trained_helper_dir(f"{ladder}-{rung}"))}


def as_approver(name: str, options: dict[str, Any]) -> str:
    """An approver spec for ``evals.approve.approve``: ``name`` or ``name:{json options}``."""
    return f"{name}:{json.dumps(options, sort_keys=True)}" if options else name


@dataclass
class LadderResult:
    chain: list[dict[str, Any]] = field(default_factory=list)
    path: str = ""
    complete: bool = False


def ladder_path(name: str) -> Path:
    return results_dir() / "ladder" / f"{name}.json"


def _train(cfg: LadderConfig, rung: Rung, say: Callable[[str], None]) -> dict[str, Any]:
    """Train the rung's helper unless it is already trained with this config; resume it from a checkpoint if any."""
    import dataclasses

    from predictors.model import trained_helper_dir
    from predictors.train_checkpoint import latest_checkpoint
    from predictors.train_helper import MANIFEST, TrainConfig, train_helper

    tc = TrainConfig(**rung.train)
    dest = trained_helper_dir(f"{cfg.name}-{rung.name}")
    wanted = json.loads(json.dumps(dataclasses.asdict(tc)))
    if (dest / MANIFEST).is_file() and read_json(dest / MANIFEST).get("config") == wanted:
        say(f"rung {rung.name}: already trained in {dest}")
        return read_json(dest / MANIFEST)
    resume = latest_checkpoint(dest) is not None and not (dest / MANIFEST).is_file()
    say(f"rung {rung.name}: training{' (resuming)' if resume else ''} into {dest}")
    return train_helper(dest, tc, threads=cfg.threads, checkpoint_every=cfg.checkpoint_every, resume=resume)


def _approve(cfg: LadderConfig, name: str, options: dict[str, Any], team: Sequence[str],
             say: Callable[[str], None]) -> dict[str, Any]:
    """Approve one system with ``team`` (already approved: the record is reused); the chain entry for it."""
    from predictors.approval import find_valid, system_identity

    from .approve import approve

    key = system_identity(name, options)["key"]
    rec = find_valid(key)
    if rec is not None:
        say(f"{name} {json.dumps(options)}: already approved at level {rec.level} (record {key})")
        return {"record": key, "level": rec.level, "approved": True, "approvers": rec.approvers,
                "chosen": {s: v["approver"] for s, v in rec.scores.items()}, "evidence": rec.evidence,
                "report": None, "reused": True}
    outcome = approve(name, options, list(cfg.suites), approvers=list(team), thresholds=cfg.thresholds,
                      on_stage=say)
    return {"record": key if outcome.approved else None, "level": outcome.level, "approved": outcome.approved,
            "approvers": list(team), "chosen": {s.suite: s.approver for s in outcome.suites},
            "checks": {s.suite: s.checks for s in outcome.suites}, "evidence": [s.run_dir for s in outcome.suites],
            "report": outcome.report, "reused": False}


def run_ladder(cfg: LadderConfig, *, on_stage: Callable[[str], None] | None = None) -> LadderResult:
    """Train and approve the rungs in order (see the module docstring); returns the chain, also written to
    ``results/ladder/<name>.json``. Raises ``ApprovalError``/``ValueError`` on bad input (a suite without truth, an
    unknown approver, a bad training setting) before anything of that step is recorded."""
    from predictors import available
    from predictors.approval import is_level0

    say = on_stage or (lambda s: None)
    team = list(cfg.approvers or [n for n in available() if is_level0(n)])
    result = LadderResult(path=str(ladder_path(cfg.name)))

    def save() -> None:
        atomic_write_json(Path(result.path), {
            "format": FORMAT, "ladder": cfg.name, "config": cfg.source, "suites": list(cfg.suites),
            "thresholds": cfg.thresholds, "updated": datetime.now(UTC).isoformat(), "complete": result.complete,
            "chain": result.chain})

    Path(result.path).parent.mkdir(parents=True, exist_ok=True)
    for rung in cfg.rungs:
        manifest = _train(cfg, rung, say)
        name, options = helper_spec(cfg.name, rung.name)
        entry = {"step": "rung", "rung": rung.name, "system": {"name": name, "options": options},
                 "training": {k: manifest.get(k) for k in ("parameters", "seconds", "final_train_loss",
                                                            "final_valid_loss", "threads", "config")}}
        entry |= _approve(cfg, name, options, team, say)
        result.chain.append(entry)
        save()
        if not entry["approved"]:
            return result
        team.append(as_approver(name, options))
        for comp in cfg.composites:
            members = [*comp.get("members", []), as_approver(name, options)]
            opts = {"members": members, **{k: v for k, v in comp.items() if k not in ("name", "members")}}
            centry = {"step": "composite", "rung": rung.name, "system": {"name": comp["name"], "options": opts}}
            centry |= _approve(cfg, comp["name"], opts, team, say)
            result.chain.append(centry)
            save()
            if not centry["approved"]:
                return result
            team.append(as_approver(comp["name"], opts))
    result.complete = True
    save()
    return result
