"""Continuation sets: per prompt, the continuations a trajectory suite asks about, each with a stable id and a kind.

- ``realized`` (``<prompt_id>:r``): the document's own next ``M`` tokens, cut with the prompt (``tasks.cuts``).
- ``sampled`` (``<prompt_id>:s<k>``, k = 0..K-1): ``K`` samples of up to ``M`` tokens from the target at temperature 1
  (``tasks.continuations.sample_continuations``: Gumbel-max, seeded by the suite's seed and the prompt, KV cache; a
  sample ends after its first EOS token). They need the model, so they are drawn when trajectory truth is built.
- ``given`` (``<prompt_id>:g:<behaviour id>``): each behaviour of the suite's ``behaviours.jsonl`` after every prompt
  it fits (``tasks.trajectory.behaviours``).

``shown_continuations`` gives the realized and given ones from the suite alone (its prompt files, tokenizer and
behaviour file): they are what whole-continuation questions show, and the same function decides the continuations
whose truth is built, so question ids and truth ids cannot drift apart. Per prompt the order is: realized, samples in
index order, given in behaviour-file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..truth import SuiteError
from .behaviours import Behaviour, given_pairs, parse_behaviours
from .spec import TrajectorySpec, given_id, realized_id, require, sampled_id


@dataclass(frozen=True)
class Continuation:
    """One continuation of one prompt: ``token_ids`` (1 to M target token ids, without the prompt), ``text`` (for
    ``given``: the behaviour text; otherwise the tokens decoded), ``behaviour`` (the behaviour id of a ``given``)."""

    id: str
    prompt_id: str
    kind: str
    token_ids: tuple[int, ...]
    text: str
    behaviour: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt_id": self.prompt_id, "kind": self.kind, "token_ids": list(self.token_ids),
                "text": self.text, "behaviour": self.behaviour}

    @classmethod
    def from_dict(cls, o: dict[str, Any]) -> Continuation:
        return cls(o["id"], o["prompt_id"], o["kind"], tuple(int(t) for t in o["token_ids"]), o["text"],
                   o.get("behaviour"))


def suite_behaviours(suite: Any, sp: TrajectorySpec | None = None) -> list[Behaviour]:
    """The behaviours kept in the suite folder (``behaviours.jsonl``), [] without a behaviour file. Raises
    ``SuiteError`` when the file is missing or its sha256 is not the manifest's (edited after the build)."""
    sp = sp or require(suite)
    if sp.behaviours_sha256 is None:
        return []
    path = suite.path / "behaviours.jsonl"
    data = path.read_bytes() if path.is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != sp.behaviours_sha256:
        raise SuiteError(f"suite {suite.name!r}: {path} is missing or not the behaviour file it was built with "
                         f"(sha256 {sp.behaviours_sha256}): rebuild the suite with --rebuild")
    return parse_behaviours(data, str(path))


def shown_continuations(suite: Any, split: str, *, tokenizer: Any = None) -> dict[str, list[Continuation]]:
    """``{prompt_id: [realized, given...]}`` for every prompt of ``split`` of a trajectory suite, in prompt order
    (``tokenizer`` defaults to the suite's own). Raises ``SuiteError`` for a next-token suite or a damaged
    behaviour file (``suite_behaviours``)."""
    sp = require(suite)
    prompts = suite.prompts(split)
    out: dict[str, list[Continuation]] = {}
    for p in prompts:
        if len(p.continuation_ids) != sp.m:
            raise SuiteError(f"suite {suite.name!r}: prompt {p.id} carries {len(p.continuation_ids)} realized "
                             f"continuation tokens, not {sp.m}: rebuild the suite with --rebuild")
        out[p.id] = [Continuation(realized_id(p.id), p.id, "realized", p.continuation_ids, p.continuation_text or "")]
    behaviours = suite_behaviours(suite, sp)
    if behaviours:
        pairs, _ = given_pairs(prompts, behaviours, tokenizer or suite.tokenizer(), sp.m)
        for g in pairs:
            out[g.prompt_id].append(Continuation(given_id(g.prompt_id, g.behaviour.id), g.prompt_id, "given",
                                                 g.token_ids, g.behaviour.text, g.behaviour.id))
    return out


def sampled_continuations(model: Any, prompt: Any, sp: TrajectorySpec, *, bos_ids: Sequence[int],
                          tokenizer: Any) -> list[Continuation]:
    """The ``sp.k`` samples of one prompt (``tasks.continuations.sample_continuations`` with ``sp``'s seed, ``m`` and
    EOS ids, temperature 1, KV cache), as ``sampled`` continuations; [] when ``sp.k`` is 0. Raises what the sampler
    raises (``TargetError`` when prompt + M exceeds the model's context)."""
    if not sp.k:
        return []
    from ..continuations import sample_continuations

    samples = sample_continuations(model, prompt.token_ids, k=sp.k, max_tokens=sp.m, seed=sp.seed,
                                   bos_ids=bos_ids, temperature=1.0, eos_ids=sp.eos_ids)
    return [Continuation(sampled_id(prompt.id, k), prompt.id, "sampled", tuple(int(t) for t in y),
                         tokenizer.decode(list(y), clean_up_tokenization_spaces=False))
            for k, y in enumerate(samples)]


def prompt_set(shown: Sequence[Continuation], samples: Sequence[Continuation]) -> list[Continuation]:
    """One prompt's continuation set in the stored order: realized, samples, given."""
    return [c for c in shown if c.kind == "realized"] + list(samples) + [c for c in shown if c.kind == "given"]
