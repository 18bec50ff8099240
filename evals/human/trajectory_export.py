"""Export trajectory-mode answers as whole-continuation predictions files (``predictors/trajectory_format.py``).

One line per answered question, in suite order: ``{"prompt_id", "continuation_id", "log10prob"}``, the value exactly
as the participant gave it (``logitpred score`` converts it to nats, x ln 10, as it converts any ``log10prob``). One
file per participant, ``human-NAME-SPLIT.jsonl``, holding only that participant's answers, and the "human team",
``human-team-SPLIT.jsonl``: the linear opinion pool of the members who answered a question, the mean of their
probabilities, ``log10(mean_i 10^x_i)`` (the pooled distribution's probability of that continuation, as the
next-token team pools distributions). Each file gets a ``.meta.json`` with the one approval check's result
(``export._write``'s rule), and both are written atomically (``tasks.io``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from predictors.approval import require_approved
from predictors.trajectory_format import LN10
from tasks.io import atomic_write_bytes, atomic_write_json

from . import trajectory_db as tdb
from .db import Database
from .trajectory import TrajectoryGame

Line = dict[str, Any]


def _in_suite_order(game: TrajectoryGame, split: str, by_cid: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(q.prompt_id, q.continuation_id, by_cid[q.continuation_id]) for q in game.questions[split]
            if q.continuation_id in by_cid]


def participant_lines(db: Database, game: TrajectoryGame, split: str, name: str) -> list[Line]:
    """One participant's answers of ``split`` as prediction lines (nobody else's)."""
    mine = {r["continuation_id"]: r["log10prob"] for r in tdb.list_answers(db, split=split) if r["name"] == name}
    return [{"prompt_id": p, "continuation_id": c, "log10prob": float(x)}
            for p, c, x in _in_suite_order(game, split, mine)]


def pool(log10probs: list[float]) -> float:
    """The linear pool of probabilities given as log10: ``log10(mean(10^x))``, computed in log space."""
    x = np.asarray(log10probs, dtype=np.float64) * LN10
    return float((logsumexp(x) - np.log(x.size)) / LN10)


def team_lines(db: Database, game: TrajectoryGame, split: str, names: list[str] | None = None) -> list[Line]:
    """The pooled answers of the members (all, or ``names``) per question answered by any of them."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in tdb.list_answers(db, split=split):
        if names is None or r["name"] in names:
            by[r["continuation_id"]].append(r["log10prob"])
    return [{"prompt_id": p, "continuation_id": c, "log10prob": pool(xs)}
            for p, c, xs in _in_suite_order(game, split, by)]


def jsonl(lines: list[Line]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n" for line in lines)


def export(db: Database, game: TrajectoryGame, split: str, out_dir: Path, *, names: list[str] | None = None,
           team: bool = True) -> list[Path]:
    """Write ``human-NAME-SPLIT.jsonl`` per participant (all, or ``names``) and ``human-team-SPLIT.jsonl``; each with
    its ``.meta.json``. Raises ValueError for an unknown name."""
    known = [r["name"] for r in tdb.participant_rows(db)]
    for n in names or []:
        if n not in known:
            raise ValueError(f"no participant {n!r}; known: {', '.join(known) or 'none yet'}")
    chosen = names or known
    base = {"name": "human", "suite": game.suite.name, "suite_version": game.suite.version, "split": split,
            "questions": "trajectory", "source": "logitpred human form (trajectory mode)",
            "exported": datetime.now(UTC).isoformat()}
    written = []
    for n in chosen:
        lines = participant_lines(db, game, split, n)
        if lines:
            written.append(_write(out_dir / f"human-{n}-{split}.jsonl", lines,
                                  {**base, "label": f"human:{n}", "options": {"participant": n}}))
    if team and chosen:
        lines = team_lines(db, game, split, chosen)
        if lines:
            written.append(_write(out_dir / f"human-team-{split}.jsonl", lines,
                                  {**base, "label": "human-team", "options": {
                                      "participants": chosen, "pool": "linear (mean probability)"}}))
    return written


def _write(path: Path, lines: list[Line], meta: dict[str, Any]) -> Path:
    approval = require_approved(meta["name"], meta["options"])  # humans are level 0: never refused
    atomic_write_bytes(path, jsonl(lines).encode("utf-8"))
    atomic_write_json(Path(str(path) + ".meta.json"), {**meta, **approval, "n": len(lines)})
    return path
