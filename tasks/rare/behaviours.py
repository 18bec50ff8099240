"""Behaviours for rare-event estimation: prefix-free sets of target token sequences, built from texts or a token.

A behaviour ``B`` is the event "the target's continuation starts with a member of B". Declared (``tasks.rare.spec``)
either as ``texts`` (each tokenized by the target tokenizer on its own, and checked to tokenize as itself after the
context it follows: ``encode(context + text) == encode(context) + encode(text)``; a merge across the boundary would make
the event mean something else than the text, as in the trajectory issue's given continuations) or as one ``token``
id. Members are made prefix-free (``prefix_free``): a member that another member is a prefix of is dropped, since its
event is contained in the shorter member's; the events of the rest are disjoint, so P(B | x) is their sum
(``tasks.rare.scorer``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class BehaviourError(ValueError):
    """A behaviour that cannot be used: empty, unknown token, or a text that does not tokenize as itself."""


@dataclass(frozen=True)
class Behaviour:
    """``id``, ``members`` (prefix-free target token sequences, sorted), and the ``texts`` or ``token`` declared."""

    id: str
    members: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...] = ()
    token: int | None = None

    def key(self) -> dict[str, Any]:
        """What identifies the behaviour in results and caches."""
        return {"id": self.id, "members": [list(m) for m in self.members], "texts": list(self.texts),
                "token": self.token}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()


def prefix_free(members: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """The members that no other (distinct) member is a prefix of, deduplicated and sorted. Raises
    ``BehaviourError`` for an empty member."""
    uniq = sorted({tuple(int(t) for t in m) for m in members})
    if any(len(m) == 0 for m in uniq):
        raise BehaviourError("a behaviour member is empty: every member needs at least one token")
    return tuple(m for m in uniq if not any(o != m and m[: len(o)] == o for o in uniq))


def from_token(bid: str, token: int, vocab_size: int) -> Behaviour:
    """The single-token behaviour ``token``. Raises ``BehaviourError`` for an id outside the vocabulary."""
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
        raise BehaviourError(f"behaviour {bid!r}: token {token!r} is not a token id in [0, {vocab_size})")
    return Behaviour(bid, ((token,),), token=token)


def from_texts(bid: str, texts: Sequence[str], tokenizer: Any, context: str = "") -> Behaviour:
    """The behaviour whose members are ``texts`` tokenized by the target ``tokenizer``, each checked after
    ``context`` (the text the inputs end with, e.g. a distribution's fixed prefix; module doc). Raises
    ``BehaviourError`` naming the behaviour, the text and both encodings when one does not tokenize as itself."""
    from ..tokens import encode_text

    if not texts or any(not isinstance(t, str) or not t for t in texts):
        raise BehaviourError(f"behaviour {bid!r}: give a non-empty list of non-empty texts")
    members = []
    for text in texts:
        alone = list(encode_text(tokenizer, text))
        if context:
            before, joint = list(encode_text(tokenizer, context)), list(encode_text(tokenizer, context + text))
            if joint != before + alone:
                raise BehaviourError(
                    f"behaviour {bid!r}: text {text!r} does not tokenize as itself after {context[-30:]!r}: alone it "
                    f"is {alone}, after the context the tokens are {joint[len(before) - 1:]} (from the context's "
                    "last token on); change the text (e.g. start it with a space) or the context")
        members.append(alone)
    return Behaviour(bid, prefix_free(members), texts=tuple(texts))
