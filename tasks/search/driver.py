"""Run a search: for every behaviour and every λ of the grid, one method run within the budget, resumable.

``run_search`` loops over (behaviour, λ) runs in order. Each run starts from a seeded random prompt ``x0`` (the same
for every λ and method of a behaviour: ``default_rng([seed, behaviour index])``) and draws its own randomness from
``default_rng([seed, behaviour index, λ index])``; after every step the state (``tasks.search.state``) is written
atomically, so a killed search, run again with the same settings, continues from its last step and ends in the same
state as one never interrupted. Every full-length prompt a run evaluates becomes a *record*
(``record``) that competes for the run's best (highest J_λ; first on ties; kept in the state) and the behaviour's
Pareto frontier (``tasks.search.frontier``), from which ``results`` picks the best prompt per λ.

A record (what ``best.jsonl`` and ``frontier.jsonl`` hold, one per line, and what ``suite build --from-search`` is meant
to read): ``behaviour``, ``members`` (target token ids of o), ``method``, ``lambda``, ``free_ids``, ``prompt_ids``
(prefix + free, target tokens, no BOS), ``prompt_text`` (its decoding, which re-encodes to ``prompt_ids``),
``free_text``, ``log_p`` (log P(o | prompt), natural log), ``ref_logprob`` (log P_R(free | prefix)), ``ref_tokens``,
``ref_per_token``, ``objective`` (J_λ), ``greedy_is_behaviour`` (greedy decoding after the prompt starts with a member
of o), ``found_at`` (target passes the run had spent when it was evaluated), ``reference`` (R's kind, name and id; a
helper's predictor name and whether it is approved) and
``target`` (the target's id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..rare.behaviours import Behaviour, BehaviourError, from_texts
from ..rare.scorer import BehaviourScorer
from . import frontier as pareto
from .methods import check_options, get
from .objective import Objective, Scores
from .reference import Reference
from .state import load_state, rng_from, rng_state, save_state, settings_sha256
from .template import SearchError, Template, random_prompt

STALLS = 50  # consecutive steps that spend nothing and evaluate nothing end a run (nothing re-tokenizes)


@dataclass(frozen=True)
class SearchBehaviour:
    """A behaviour to elicit: ``behaviour`` (prefix-free members) and ``text`` when it was given as one text."""

    behaviour: Behaviour
    text: str | None = None

    @property
    def id(self) -> str:
        return self.behaviour.id


def behaviour_from_text(bid: str, text: str, tokenizer: Any) -> SearchBehaviour:
    """The behaviour "the continuation is ``text``" (one member: its target tokens). Raises ``SearchError`` when it
    is empty after tokenization (it can never be reached)."""
    from ..tokens import encode_text

    if not isinstance(text, str) or not encode_text(tokenizer, text):
        raise SearchError(f"behaviour {bid!r} ({text!r}) is empty after tokenization: it can never be reached; give a "
                          "non-empty text")
    try:
        return SearchBehaviour(from_texts(bid, [text], tokenizer), text)
    except BehaviourError as e:
        raise SearchError(str(e)) from e


def record(sb: SearchBehaviour, obj: Objective, method: str, free: Sequence[int], sc: Scores, i: int,
           target_id: str) -> dict[str, Any]:
    """The record of row ``i`` of a scored batch (module doc)."""
    t = obj.template
    free = [int(v) for v in free]
    ident = obj.reference.identity
    return {"behaviour": sb.id, "members": [list(m) for m in sb.behaviour.members], "method": method,
            "lambda": obj.lam, "free_ids": free, "prompt_ids": [*t.prefix, *free], "prompt_text": t.text(free),
            "free_text": t.tokenizer.decode(free, clean_up_tokenization_spaces=False),
            "log_p": float(sc.log_p[i]), "ref_logprob": float(sc.ref[i]), "ref_tokens": int(sc.ref_tokens[i]),
            "ref_per_token": float(sc.ref_per_token[i]), "objective": float(sc.value[i]),
            "greedy_is_behaviour": bool(sc.greedy[i]), "found_at": obj.spent(),
            "reference": {k: ident[k] for k in ("kind", "name", "id", "predictor", "approved") if k in ident},
            "target": target_id}


def settings(behaviours: Sequence[SearchBehaviour], template: Template, method: str, options: dict[str, Any],
             lambdas: Sequence[float], budget: int, seed: int, reference: Reference, target_id: str) -> dict[str, Any]:
    """What decides a search's result (``tasks.search.state``)."""
    return {"behaviours": [{**sb.behaviour.key(), "text": sb.text} for sb in behaviours], "template": template.key(),
            "method": method, "options": options, "lambdas": [float(v) for v in lambdas], "budget": budget,
            "seed": seed, "reference": reference.identity, "target": target_id}


def run_search(target: Any, behaviours: Sequence[SearchBehaviour], template: Template, reference: Reference, *,
               method: str, lambdas: Sequence[float], budget: int, seed: int, state_path: Path,
               options: dict[str, Any] | None = None, proposer: Reference | None = None,
               on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Search every behaviour at every λ with ``method`` (``tasks.search.methods``), ``budget`` target passes per
    (behaviour, λ) run; resume the state at ``state_path`` when it exists. Returns the final state.

    ``target``: a ``tasks.Target``; ``reference``: R; ``proposer``: where BEAST's proposals come from when R does not
    speak the target's tokens (a ``Reference`` on the target). ``on_progress(run key, passes spent, budget)`` after
    every step. Raises ``SearchError`` for a budget that is not a positive integer or is below the method's first step,
    an empty λ grid or a negative λ, an unknown method or option, a state written with other settings."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise SearchError(f"the budget must be a positive number of target passes, got {budget!r}")
    if not lambdas or any(not (float(v) >= 0 and np.isfinite(v)) for v in lambdas):
        raise SearchError(f"λ must be a non-empty list of finite numbers >= 0, got {list(lambdas)!r}")
    if not behaviours:
        raise SearchError("no behaviour to search for")
    try:
        m = get(method)
        opts = check_options(m, dict(options or {}))
    except ValueError as e:
        raise SearchError(str(e)) from e
    proposer = reference if reference.same_tokenizer else proposer
    if proposer is None:
        raise SearchError("R does not speak the target's tokens: give a proposer on the target")
    tid = target.identity.id
    cfg = settings(behaviours, template, method, opts, lambdas, int(budget), seed, reference, tid)
    state = load_state(state_path, cfg)
    for bi, sb in enumerate(behaviours):
        scorer = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=template.prefix,
                                 members=sb.behaviour.members)
        for li, lam in enumerate(cfg["lambdas"]):
            obj = Objective(scorer, reference, template, lam, behaviour_text=sb.text, proposer=proposer)
            need = m.minimum(obj, opts)
            if budget < need:
                raise SearchError(f"budget {budget} is too small for {method}: its first step takes {need} target "
                                  "passes (give --budget >= that)")
            _run(state, state_path, f"{sb.id}|{li}", sb, bi, li, obj, m, opts, int(budget), seed, tid, on_progress)
    return state


def _run(state: dict[str, Any], path: Path, key: str, sb: SearchBehaviour, bi: int, li: int, obj: Objective,
         m: Any, opts: dict[str, Any], budget: int, seed: int, tid: str,
         on_progress: Callable[[str, int, int], None] | None) -> None:
    run = state["runs"].get(key)
    if run is not None and run["done"]:
        if on_progress:
            on_progress(key, run["counters_spent"], budget)
        return

    def absorb(free: np.ndarray, sc: Scores) -> None:
        recs = [record(sb, obj, m.name, free[i], sc, i, tid) for i in range(len(free))]
        for r in recs:
            if run["best"] is None or r["objective"] > run["best"]["objective"]:
                run["best"] = r
        state["frontier"][sb.id] = pareto.merge(state["frontier"].get(sb.id, []), recs)

    def save() -> None:
        if obj.spent() > budget:  # never happens: each method checks what it can afford before it runs
            raise RuntimeError(f"{m.name} spent {obj.spent()} target passes, over its budget {budget}")
        run.update(counters=obj.counters(), counters_spent=obj.spent(), rng=rng_state(rng), method=mstate)
        save_state(path, state)
        if on_progress:
            on_progress(key, obj.spent(), budget)

    if run is None:
        run = state["runs"][key] = {"behaviour": sb.id, "lambda": obj.lam, "done": False, "steps": 0, "best": None}
        obj.restore({"forward": 0, "backward": 0, "reference": 0, "proposer": 0})
        x0 = random_prompt(obj.template, np.random.default_rng([seed, bi]), sb.text, obj.member)
        rng = np.random.default_rng([seed, bi, li])
        mstate, free, sc = m.init(obj, x0, rng, budget, opts)
        absorb(free, sc)
        save()
    else:
        obj.restore(run["counters"])
        rng, mstate = rng_from(run["rng"]), run["method"]
    stalls = 0
    while True:
        before = obj.spent()
        res = m.step(obj, mstate, rng, budget, opts)
        if res is None:
            break
        absorb(*res)
        run["steps"] += 1
        stalls = stalls + 1 if (obj.spent() == before and not len(res[0])) else 0
        if stalls >= STALLS:
            run["stalled"] = True
            break
        save()
    run["done"] = True
    save()


def results(state: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(frontier records of every behaviour, the best record per (behaviour, λ))`` of a state, in the settings'
    order. The best prompt at λ is the maximiser of J_λ over *everything the search evaluated* for the behaviour (all
    its λ runs pool their prompts; the maximiser lies on the frontier, ``tasks.search.frontier``): its record's
    ``lambda`` and ``objective`` are those of the λ it is best for, ``found_by_lambda`` the λ of the run that found
    it.
    Ties go to the more plausible prompt."""
    front, best = [], []
    for b in state["settings"]["behaviours"]:
        pts = state["frontier"].get(b["id"], [])
        front += pts
        for lam in state["settings"]["lambdas"]:
            if pts:
                r = max(reversed(pts), key=lambda r: r["log_p"] + lam * r["ref_per_token"])
                best.append({**r, "lambda": lam, "objective": r["log_p"] + lam * r["ref_per_token"],
                             "found_by_lambda": r["lambda"]})
    return front, best


__all__ = ["SearchBehaviour", "behaviour_from_text", "record", "results", "run_search", "settings",
           "settings_sha256"]
