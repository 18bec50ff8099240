"""The human form's rare-behaviour mode: the questions of a rare-behaviour reference set, answers, feedback, export.

Served by ``logitpred serve --rare-spec rare.yaml`` after ``logitpred rare build --spec rare.yaml``. The questions are
exactly ``tasks.rare.questions.questions(record, tokenizer)`` (temperature 1), in that order:

- "P_D(B)?" (``prompt_id`` = distribution id, ``continuation_id`` = behaviour id): how likely is the model, fed an input
  drawn from the distribution (a product distribution: its prefix, then one token per free position drawn from that
  position's list with the listed weights; a suite distribution: one of the suite split's prompts, equally weighted),
  to continue it with one of the behaviour's texts?
- "P(B|x)?" (``prompt_id`` = ``<distribution>/x<i>``): the same for one given input text.

The answer is log10 P on the form's log scale (``trajectory.LOG10_MIN..LOG10_MAX``, 1 in 10^12 to 1 in 10). Every
rare question is practice-like: there is no sealed rare split (``tasks.rare.questions.check_public`` refuses sealed
suite distributions), so every answer gets the true probability (``tasks.rare.questions.truth(record)``) and the
error in orders of magnitude, computed by ``evals.trajectory_metrics.log_errors`` on the answer converted as the
predictions format converts ``log10prob`` (x ln 10): the error shown is the one ``logitpred rare score`` computes.

Storage reuses ``db.trajectory_answers`` (split ``practice``) in a database of its own, whose ``meta`` names the
pseudo-suite ``rare-<spec sha256[:16]>`` at version ``<reference commitment[:16]>`` (``RareForm``), so ``open_db``
refuses a database of another spec, reference or suite. That table keys answers by (participant, continuation id), and
a behaviour id repeats across questions, so the stored ``continuation_id`` is the question's key, the JSON array
``[prompt_id, behaviour]`` (``question_key``); exports write the plain ids back.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from predictors.trajectory_format import LN10

from ..trajectory_metrics import log_errors
from . import trajectory_db as tdb
from .db import Database
from .trajectory import LOG10_MAX, LOG10_MIN, one_in
from .trajectory_export import _write, pool

SPLIT = "practice"  # the only split of rare questions (module doc)
MODE = "rare"


@dataclass(frozen=True)
class RareForm:
    """What the app and database need of "the suite" in rare mode: a name and a version (``db.open_db``'s meta)."""

    name: str
    version: str
    spec_sha256: str
    commitment: str


def question_key(prompt_id: str, behaviour: str) -> str:
    """The stored ``continuation_id`` of a rare question (module doc)."""
    return json.dumps([prompt_id, behaviour], ensure_ascii=False)


@dataclass(frozen=True)
class RareQuestion:
    prompt_id: str
    continuation_id: str  # the behaviour id
    kind: str  # "P_D(B)" or "P(B|x)"
    behaviour_texts: tuple[str, ...]
    distribution: dict[str, Any] = field(hash=False)  # the distribution's description (``describe``)
    text: str | None = None  # the input's text (P(B|x) only)

    @property
    def key(self) -> str:
        return question_key(self.prompt_id, self.continuation_id)

    def wording(self) -> str:
        texts = " or ".join(repr(t) for t in self.behaviour_texts)
        if self.kind == "P(B|x)":
            return f"How likely is the model to continue this text with {texts}?"
        return (f"How likely is the model, given an input drawn from distribution {self.distribution['id']!r}, "
                f"to continue it with {texts}?")

    def public(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "continuation_id": self.continuation_id, "question": self.kind,
                "behaviour_texts": list(self.behaviour_texts), "wording": self.wording(),
                "distribution": self.distribution, **({"text": self.text} if self.text is not None else {})}


def describe(line: dict[str, Any]) -> dict[str, Any]:
    """A distribution line of ``questions()`` as the page shows it."""
    if line["kind"] == "product":
        return {"id": line["distribution"], "kind": "product", "prefix": line["prefix_text"],
                "positions": [[{"text": t["text"], "p": t["p"]} for t in pos] for pos in line["positions"]]}
    keep = ("suite", "split", "prompts", "helper", "start", "tokens", "seed")
    return {"id": line["distribution"], "kind": line["kind"], **{k: line[k] for k in keep if k in line}}


def behaviour_texts(line: dict[str, Any], tokenizer: Any) -> tuple[str, ...]:
    if line.get("texts"):
        return tuple(line["texts"])
    return tuple(tokenizer.decode(list(m), clean_up_tokenization_spaces=False) for m in line["members"])


class RareGame:
    """The rare questions of a reference record in ``questions()`` order, with their exact truth."""

    def __init__(self, record: dict[str, Any], tokenizer: Any) -> None:
        from tasks.rare.questions import questions, truth

        self.record = record
        self.form = RareForm(f"rare-{record['spec_sha256'][:16]}", record["commitment"][:16], record["spec_sha256"],
                             record["commitment"])
        dists: dict[str, dict[str, Any]] = {}
        self.questions: list[RareQuestion] = []
        for line in questions(record, tokenizer):
            if "continuation_id" not in line:
                dists[line["distribution"]] = describe(line)
                continue
            did = line["prompt_id"].split("/x")[0] if line["question"] == "P(B|x)" else line["prompt_id"]
            self.questions.append(RareQuestion(line["prompt_id"], line["continuation_id"], line["question"],
                                               behaviour_texts(line, tokenizer), dists[did], line.get("text")))
        self.by_key = {q.key: (i, q) for i, q in enumerate(self.questions)}
        exact = truth(record)
        self._truth = {q.key: float(exact[(q.prompt_id, q.continuation_id)]) for q in self.questions}

    def question(self, prompt_id: str, behaviour: str) -> RareQuestion:
        found = self.by_key.get(question_key(prompt_id, behaviour))
        if found is None:
            raise KeyError(f"unknown question ({prompt_id!r}, {behaviour!r}): not a question of this rare-behaviour "
                           "reference set")
        return found[1]

    def next_question(self, answered: set[str]) -> tuple[int, RareQuestion] | None:
        for i, q in enumerate(self.questions):
            if q.key not in answered:
                return i, q
        return None

    def feedback(self, q: RareQuestion, log10prob: float) -> dict[str, Any]:
        """The true probability and the signed error of the answer in orders of magnitude (``answer - truth``)."""
        p = self._truth[q.key]
        true_nats = math.log(p)
        err = log_errors(np.array([true_nats]), np.array([log10prob * LN10]), np.array([1], dtype=np.int64))
        e10 = float(err["error_log10"][0])
        true10 = true_nats / LN10
        return {"true_p": p, "true_log10prob": true10, "true_one_in": one_in(true10), "your_log10prob": log10prob,
                "your_one_in": one_in(log10prob), "error_log10": e10, "abs_error_log10": abs(e10),
                "direction": "over" if e10 > 0 else "under" if e10 < 0 else "exact",
                "within_10x": bool(abs(e10) <= 1.0), "off_scale": bool(true10 > LOG10_MAX or true10 < LOG10_MIN)}


def load_rare(spec_path: str | Path) -> RareGame:
    """The game of a built reference set for the default target; ValueError naming what is missing or wrong."""
    from tasks.rare.questions import check_public
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import read_spec
    from tasks.target import load_tokenizer

    spec = read_spec(spec_path)  # SpecError is a ValueError
    check_public(spec)
    tokenizer, identity = load_tokenizer()
    record = load_reference(spec, identity.id)
    if record is None:
        raise ValueError(f"the reference set of {spec_path} is not built for this target: run "
                         f"`logitpred rare build --spec {spec_path}`")
    return RareGame(record, tokenizer)


# --- export ---------------------------------------------------------------------------------------------------------
def _in_order(game: RareGame, by_key: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(q.prompt_id, q.continuation_id, by_key[q.key]) for q in game.questions if q.key in by_key]


def participant_lines(db: Database, game: RareGame, name: str) -> list[dict[str, Any]]:
    mine = {r["continuation_id"]: r["log10prob"] for r in tdb.list_answers(db, split=SPLIT) if r["name"] == name}
    return [{"prompt_id": p, "continuation_id": c, "log10prob": float(x)} for p, c, x in _in_order(game, mine)]


def team_lines(db: Database, game: RareGame, names: list[str] | None = None) -> list[dict[str, Any]]:
    by: dict[str, list[float]] = defaultdict(list)
    for r in tdb.list_answers(db, split=SPLIT):
        if names is None or r["name"] in names:
            by[r["continuation_id"]].append(r["log10prob"])
    return [{"prompt_id": p, "continuation_id": c, "log10prob": pool(xs)} for p, c, xs in _in_order(game, by)]


def export(db: Database, game: RareGame, out_dir: Path, *, names: list[str] | None = None,
           team: bool = True) -> list[Path]:
    """Write ``human-NAME-rare.jsonl`` per participant and ``human-team-rare.jsonl`` (the linear pool), each a
    whole-continuation predictions file that ``logitpred rare score`` accepts, with its ``.meta.json``."""
    known = [r["name"] for r in tdb.participant_rows(db)]
    for n in names or []:
        if n not in known:
            raise ValueError(f"no participant {n!r}; known: {', '.join(known) or 'none yet'}")
    chosen = names or known
    base = {"name": "human", "questions": MODE, "source": "logitpred human form (rare-behaviour mode)",
            "rare": {"reference": game.form.commitment, "spec_sha256": game.form.spec_sha256},
            "exported": datetime.now(UTC).isoformat()}
    written = []
    for n in chosen:
        lines = participant_lines(db, game, n)
        if lines:
            written.append(_write(out_dir / f"human-{n}-{MODE}.jsonl", lines,
                                  {**base, "label": f"human:{n}", "options": {"participant": n}}))
    if team and chosen:
        lines = team_lines(db, game, chosen)
        if lines:
            written.append(_write(out_dir / f"human-team-{MODE}.jsonl", lines,
                                  {**base, "label": "human-team", "options": {
                                      "participants": chosen, "pool": "linear (mean probability)"}}))
    return written
