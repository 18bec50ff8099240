"""Export human answers as standard predictions JSONL, one file per participant or one for the "human team".

Each file gets a ``.meta.json`` beside it, as ``logitpred predict`` writes, so ``logitpred score FILE`` labels the run
(``human:NAME`` or ``human-team``) and the leaderboard ranks it with every other predictor. Humans are approved
predictors by definition (DESIGN.md, level 0): the metadata's approval fields come from the one approval check,
``predictors.approval.require_approved``, like every other predictor's, so the rule lives in one place.

Files are written atomically (``tasks.io``): a kill during an export leaves each file as it was or complete. Named
candidates are written as token text, or as token ids where the text is ambiguous (``write_jsonl(..., vocab=)``).

The team prediction is the linear opinion pool: the mean of the members' full distributions for each prompt (members
who did not answer a prompt are left out of its mean). When all members of a prompt used the same rest rule, the pool
is written exactly as ``top`` (every named token, with its pooled probability) plus that rule: each member spreads its
rest over its unnamed tokens in proportion to one fixed weight vector w (uniform or unigram), so on tokens nobody
named the pool is ``w_t * mean_i(rest_i / W_i)``, proportional to w, which is what the rule reproduces. When the rules
differ the pool is written as a full vector (``probs_b64``).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from predictors.approval import require_approved
from predictors.format import Prediction
from predictors.jsonl import write_jsonl
from tasks.io import atomic_write_bytes, atomic_write_json

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
            "source": "logitpred human form", "exported": stamp}
    written = []
    for n in chosen:
        preds = participant_predictions(db, game, split, n)
        if preds:
            written.append(_write(out_dir / f"human-{n}-{split}.jsonl", preds, game,
                                  {**base, "label": f"human:{n}", "options": {"participant": n}}))
    if team and chosen:
        preds = team_predictions(db, game, split, chosen)
        if preds:
            written.append(_write(out_dir / f"human-team-{split}.jsonl", preds, game,
                                  {**base, "label": "human-team", "options": {"participants": chosen,
                                                                          "pool": "linear (mean distribution)"}}))
    return written


def _write(path: Path, preds: list[Prediction], game: Game, meta: dict[str, Any]) -> Path:
    """The predictions file and its ``.meta.json``, each replaced atomically; the meta carries the approval check's
    result for the system it names (the same check ``logitpred score`` repeats on the file)."""
    approval = require_approved(meta["name"], meta["options"])  # humans are level 0: never refused
    with tempfile.TemporaryDirectory() as tmp:  # serialize beside, then one atomic replace of the destination
        staged = Path(tmp) / path.name
        n = write_jsonl(staged, preds, vocab=game.suite.vocabulary)
        atomic_write_bytes(path, staged.read_bytes())
    atomic_write_json(Path(str(path) + ".meta.json"), {**meta, **approval, "n": n})
    return path
