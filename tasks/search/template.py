"""The prompt template of a search: a fixed prefix (target token ids of a text, may be empty) and ``k`` free tokens.

A prompt is ``prefix + x`` with ``x`` the ``k`` free target token ids; the model sees ``bos + prefix + x``. Free tokens
are drawn from ``allowed``: every id of the tokenizer that is not a control token (``tasks.tokens.special_ids``).

**Re-tokenization** (``Template.valid``): a prompt counts only if its text encodes back to exactly its ids,
``encode(decode(prefix + x)) == prefix + x``, and, for a behaviour given as text ``o``, if ``decode(prefix + x) + o``
encodes to ``prefix + x + member``: otherwise the text a person would read (or a predictor would receive) is another
token sequence than the one searched, and "the continuation is o" would mean something else. GCG papers filter their
candidates the same way (Zou et al. 2023's ``get_filtered_cands``; nanogcg's ``filter_ids``). Candidates that fail are
dropped before they are evaluated, so they cost no target pass.

Errors (``SearchError``, a ``ValueError``): k < 1, a template (BOS + prefix + k + the longest member) longer than the
target's context, a prefix that does not tokenize as itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class SearchError(ValueError):
    """A search that cannot run as asked: bad template, behaviour, reference, budget or state; the message says why."""


@dataclass(frozen=True)
class Template:
    """``prefix_text`` and its target token ids ``prefix``, ``k`` free tokens, ``allowed`` ids ``(m,)`` int64 sorted,
    and the target ``tokenizer`` that checks re-tokenization."""

    prefix_text: str
    prefix: tuple[int, ...]
    k: int
    allowed: np.ndarray
    tokenizer: Any

    def text(self, free: Sequence[int]) -> str:
        """The prompt's text: ``decode(prefix + free)`` (no clean-up of spaces)."""
        return self.tokenizer.decode([*self.prefix, *map(int, free)], clean_up_tokenization_spaces=False)

    def valid(self, free: np.ndarray, behaviour_text: str | None = None,
              member: Sequence[int] | None = None) -> np.ndarray:
        """``(n,)`` bool: which rows of ``free`` ``(n, i)`` re-tokenize to themselves (module doc), and, when
        ``behaviour_text`` is given, are followed by it as ``member``."""
        from ..tokens import encode_text

        free = np.asarray(free, dtype=np.int64)
        out = np.zeros(len(free), dtype=bool)
        for r, row in enumerate(free.tolist()):
            ids = [*self.prefix, *row]
            text = self.text(row)
            if encode_text(self.tokenizer, text) != ids:
                continue
            follows = ids + list(member or [])
            if behaviour_text is not None and encode_text(self.tokenizer, text + behaviour_text) != follows:
                continue
            out[r] = True
        return out

    def key(self) -> dict[str, Any]:
        """What identifies the template in a search's settings."""
        return {"prefix_text": self.prefix_text, "prefix": list(self.prefix), "k": self.k,
                "allowed": int(len(self.allowed))}


def make_template(tokenizer: Any, prefix_text: str, k: int, *, bos: Sequence[int], context: int | None,
                  longest_member: int, vocab_size: int) -> Template:
    """The template ``prefix_text`` + ``k`` free tokens for a target with ``bos`` ids, ``context`` positions (``None``:
    unbounded) and output vocabulary ``vocab_size``; ``longest_member``: tokens of the longest behaviour member (they
    follow the prompt in the scoring pass). Raises ``SearchError`` (module doc)."""
    from ..tokens import encode_text, special_ids

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SearchError(f"the template needs at least one free token: --free must be >= 1, got {k!r}")
    prefix = encode_text(tokenizer, prefix_text) if prefix_text else []
    if prefix and tokenizer.decode(prefix, clean_up_tokenization_spaces=False) != prefix_text:
        raise SearchError(f"prefix {prefix_text!r} does not decode back to itself from its tokens {prefix[:12]}: "
                          "change the prefix text")
    need = len(bos) + len(prefix) + k + longest_member
    if context is not None and need > context:
        raise SearchError(f"the template is longer than the target's context: BOS {len(bos)} + prefix {len(prefix)} "
                          f"+ {k} free + behaviour {longest_member} = {need} tokens > {context}: shorten the prefix "
                          "or use fewer free tokens")
    n = min(len(tokenizer), vocab_size)
    allowed = np.setdiff1d(np.arange(n, dtype=np.int64), np.fromiter(special_ids(tokenizer), dtype=np.int64))
    return Template(prefix_text, tuple(int(t) for t in prefix), k, allowed, tokenizer)


def random_prompt(template: Template, rng: np.random.Generator, behaviour_text: str | None = None,
                  member: Sequence[int] | None = None, tries: int = 10_000) -> np.ndarray:
    """A ``(k,)`` prompt of uniform draws from ``template.allowed`` that passes ``template.valid``, redrawn until it
    does. Raises ``SearchError`` after ``tries`` failures."""
    for _ in range(tries):
        x = rng.choice(template.allowed, size=template.k)
        if template.valid(x[None], behaviour_text, member)[0]:
            return x
    raise SearchError(f"no random prompt of {template.k} free tokens re-tokenizes to itself in {tries} draws")
