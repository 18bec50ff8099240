"""What a trajectory suite is: its section of the suite manifest, the sampling settings, and continuation ids.

A suite whose config has ``continuation = M > 0`` is a *trajectory suite*. Its manifest gains a ``trajectory``
section (written by ``build_suite`` through ``manifest_section``)::

    {"continuation": M, "samples": K, "eos_ids": [...], "sampling": {"sampler", "seed", "temperature", "k",
     "max_tokens", "eos_ids"}, "behaviours": null | {"file", "sha256", "count",
     "given": {split: {"pairs", "left_out", "by_behaviour": {id: {"kept", "boundary_merge", "empty",
     "longer_than_continuation"}}}}},
     "questions": {"next_token": false, "whole_continuation": ["realized", "given"?], "step_wise": ["sampled"?]}}

``questions`` says which kinds of question each split asks: the realized continuation of every prompt is shown whole
(it is the question), so the prompt's plain next-token question, whose answer it shows, is never asked
(``tasks.trajectory.questions``); ``sampled`` continuations are asked only step by step (``tasks.trajectory.steps``).

Continuation ids (stable: they depend only on the prompt id, the kind and the sample index or behaviour id):
``<prompt_id>:r`` (realized), ``<prompt_id>:s<k>`` (k-th sample, from 0), ``<prompt_id>:g:<behaviour id>`` (given).
Next-token suites (``M = 0``) have no section; ``spec`` then says so.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..truth import SPLITS, SuiteError

KINDS = ("realized", "sampled", "given")


def realized_id(prompt_id: str) -> str:
    return f"{prompt_id}:r"


def sampled_id(prompt_id: str, k: int) -> str:
    return f"{prompt_id}:s{k}"


def given_id(prompt_id: str, behaviour_id: str) -> str:
    return f"{prompt_id}:g:{behaviour_id}"


@dataclass(frozen=True)
class TrajectorySpec:
    """A trajectory suite's settings, from its manifest: ``m`` continuation tokens, ``k`` samples per prompt,
    ``seed`` (the suite's seed: samples are seeded by it and the prompt, ``tasks.continuations.prompt_seed``),
    ``eos_ids`` (a sample ends after its first such token), ``behaviours_sha256`` (None without a behaviour file)."""

    m: int
    k: int
    seed: int
    eos_ids: tuple[int, ...]
    behaviours_sha256: str | None
    questions: Mapping[str, Any]

    def sampling_key(self) -> dict[str, Any]:
        """What determines the samples besides the target (``tasks.continuations.sampling_settings`` without the
        library versions, which are recorded but do not key the cache)."""
        from ..continuations import SAMPLER

        return {"sampler": SAMPLER, "seed": self.seed, "temperature": 1.0, "k": self.k, "max_tokens": self.m,
                "eos_ids": list(self.eos_ids)}

    def settings_hash(self) -> str:
        """12 hex characters of sha256 over ``sampling_key`` (canonical JSON): part of the trajectory folder's name."""
        text = json.dumps(self.sampling_key(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def spec(suite: Any) -> TrajectorySpec | None:
    """The ``TrajectorySpec`` of a built suite, or None for a next-token suite (``continuation`` 0 or absent).
    Raises ``SuiteError`` when a suite's config asks for continuations but its manifest lacks the section (built by
    hand or by an older version)."""
    config = suite.manifest.get("config") or {}
    if not int(config.get("continuation") or 0):
        return None
    sec = suite.manifest.get("trajectory")
    if not isinstance(sec, dict):
        raise SuiteError(f"suite {suite.name!r} asks for continuations but its manifest has no trajectory section: "
                         f"rebuild it with `logitpred suite build {suite.name} --rebuild`")
    beh = sec.get("behaviours")
    return TrajectorySpec(int(sec["continuation"]), int(sec["samples"]), int(config.get("seed", 0)),
                          tuple(int(t) for t in sec["eos_ids"]), beh["sha256"] if beh else None, sec["questions"])


def require(suite: Any) -> TrajectorySpec:
    """``spec(suite)``, raising ``SuiteError`` for a next-token suite (naming the option that makes one)."""
    s = spec(suite)
    if s is None:
        raise SuiteError(f"suite {suite.name!r} is a next-token suite (continuation 0): it has no continuations; "
                         "build a trajectory suite with --continuation M")
    return s


def manifest_section(config: Any, rows: Mapping[str, Sequence[Any]], tokenizer: Any) -> tuple[dict[str, Any],
                                                                                                bytes | None]:
    """The manifest's ``trajectory`` section for ``config`` (a ``SuiteConfig`` with ``continuation > 0``) and its cut
    prompts ``rows`` (``{split: [Prompt]}``), and the behaviour file's bytes to keep in the suite folder (None
    without one). Reads and checks the behaviour file (``tasks.trajectory.behaviours``): raises ``SuiteError`` for a
    bad file or a behaviour that fits no prompt of either split."""
    from .behaviours import REASONS, check_fit, given_pairs, read_behaviours

    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    whole = ["realized"]
    data, beh = None, None
    if config.behaviours:
        behaviours, data, sha = read_behaviours(config.behaviours)
        given: dict[str, Any] = {}
        total = {b.id: Counter() for b in behaviours}  # over both splits: a behaviour must fit some prompt
        for split in SPLITS:
            pairs, counts = given_pairs(rows[split], behaviours, tokenizer, config.continuation)
            given[split] = {"pairs": len(pairs), "left_out": sum(c[r] for c in counts.values() for r in REASONS),
                            "by_behaviour": counts}
            for b, c in counts.items():
                total[b].update(c)
        check_fit([p for s in SPLITS for p in rows[s]], behaviours, total, tokenizer, config.continuation,
                  config.name)
        beh = {"file": str(config.behaviours), "sha256": sha, "count": len(behaviours), "given": given}
        whole.append("given")
    questions = {"next_token": False, "whole_continuation": whole, "step_wise": ["sampled"] if config.samples else []}
    sp = TrajectorySpec(config.continuation, config.samples, config.seed, tuple(eos), beh and beh["sha256"], questions)
    section = {"continuation": sp.m, "samples": sp.k, "eos_ids": eos, "sampling": sp.sampling_key(),
               "behaviours": beh, "questions": questions}
    return section, data
