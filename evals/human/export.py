"""Export human answers as standard predictions JSONL, one file per participant or one for the "human team".

Each file gets a ``.meta.json`` beside it, as ``logitpred predict`` writes, so ``logitpred score FILE`` labels the run
(``human:NAME`` or ``human-team``) and the leaderboard ranks it with every other predictor. Humans are approved
predictors by definition (DESIGN.md), so the metadata says ``approved: true``.

The team prediction is the linear opinion pool: the mean of the members' full distributions for each prompt (members
who did not answer a prompt are left out of its mean). When all members of a prompt used the same rest rule, the pool
is written exactly as ``top`` (every named token, with its pooled probability) plus that rule: each member spreads its
rest over its unnamed tokens in proportion to one fixed weight vector w (uniform or unigram), so on tokens nobody
named the pool is ``w_t * mean_i(rest_i / W_i)``, proportional to w, which is what the rule reproduces. When the rules
differ the pool is written as a full vector (``probs_b64``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from predictors.format import Prediction, write_jsonl

from .db import Database
from .game import Candidate, Game


def _prediction(game: Game, row: dict[str, Any]) -> tuple[Prediction, np.ndarray]:
    cands = [Candidate(c["text"], c["token_id"], c["p"]) for c in row["candidates"]]
    return game.check(row["prompt_id"], cands, row["rest"])


def participant_predictions(db: Database, game: Game, split: str, name: str) -> list[Prediction]:
    rows = [r for r in db.list_submissions(split=split) if r["name"] == name]
    return [_prediction(game, r)[0] for r in rows]


def team_predictions(db: Database, game: Game, split: str, names: list[str] | None = None) -> list[Prediction]:
    """The linear pool of the members' answers per prompt, in suite order (prompts nobody answered are left out)."""
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in db.list_submissions(split=split):
        if names is None or r["name"] in names:
            by_prompt[r["prompt_id"]].append(r)
    out = []
    for p in game.prompts[split]:
        rows = by_prompt.get(p.id)
        if not rows:
            continue
        dense = np.stack([_prediction(game, r)[1] for r in rows])
        pool = dense.mean(axis=0)
        rules = {r["rest"] for r in rows}
        if len(rules) == 1:
            named = sorted({c["token_id"] for r in rows for c in r["candidates"]})
            out.append(Prediction(p.id, [(t, float(pool[t])) for t in named], rules.pop()))
        else:
            out.append(Prediction(p.id, probs=pool))
    return out


def export(db: Database, game: Game, split: str, out_dir: Path, *, names: list[str] | None = None,
           team: bool = True) -> list[Path]:
    """Write ``human-NAME-SPLIT.jsonl`` per participant (all, or ``names``) and ``human-team-SPLIT.jsonl``."""
    known = [r["name"] for r in db.participant_rows()]
    for n in names or []:
        if n not in known:
            raise ValueError(f"no participant {n!r}; known: {', '.join(known) or 'none yet'}")
    chosen = names or known
    stamp = datetime.now(UTC).isoformat()
    base = {"name": "human", "suite": game.suite.name, "suite_version": game.suite.version, "split": split,
            "approved": True, "source": "logitpred human form", "exported": stamp}
    written = []
    for n in chosen:
        preds = participant_predictions(db, game, split, n)
        if preds:
            written.append(_write(out_dir / f"human-{n}-{split}.jsonl", preds,
                                  {**base, "label": f"human:{n}", "options": {"participant": n}}))
    if team and chosen:
        preds = team_predictions(db, game, split, chosen)
        if preds:
            written.append(_write(out_dir / f"human-team-{split}.jsonl", preds,
                                  {**base, "label": "human-team", "options": {"participants": chosen,
                                                                          "pool": "linear (mean distribution)"}}))
    return written


def _write(path: Path, preds: list[Prediction], meta: dict[str, Any]) -> Path:
    write_jsonl(path, preds)
    Path(str(path) + ".meta.json").write_text(json.dumps({**meta, "n": len(preds)}, indent=2))
    return path
