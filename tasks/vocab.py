"""The target's vocabulary as predictors name it: each token id with its raw form and its decoded text.

Predictions name candidates by decoded text (``" Paris"``), by raw tokenizer form (``"ĠParis"``) or by integer id.
Several ids can decode to the same text (byte-fallback pieces decode to U+FFFD, for example); such a text is ambiguous
and must be given by raw form or id. Stored as ``vocab.json`` in each suite so predictors need no tokenizer library.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Vocabulary:
    raw: list[str]  # tokenizer's own form of each id (e.g. "ĠParis")
    text: list[str]  # what each id decodes to on its own (e.g. " Paris")
    _by_text: dict[str, int] = field(init=False, repr=False)
    _by_raw: dict[str, int] = field(init=False, repr=False)
    _ambiguous: set[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != len(self.text):
            raise ValueError("raw and text vocabularies differ in length")
        self._by_raw = {t: i for i, t in enumerate(self.raw)}
        self._by_text, self._ambiguous = {}, set()
        for i, t in enumerate(self.text):
            if t in self._by_text:
                self._ambiguous.add(t)
            else:
                self._by_text[t] = i
        for t in self._ambiguous:
            del self._by_text[t]

    def __len__(self) -> int:
        return len(self.raw)

    def lookup(self, token: str) -> int | None:
        """Id of a token given by decoded text or raw form; None if unknown or ambiguous (see ``explain``)."""
        if token in self._by_text:
            return self._by_text[token]
        return self._by_raw.get(token)

    def explain_unknown(self, token: str, n: int = 3) -> str:
        """Why ``token`` is not a single token of this vocabulary, with the nearest entries to help fix it."""
        if token in self._ambiguous:
            ids = [i for i, t in enumerate(self.text) if t == token][:5]
            return f"{token!r} decodes from several tokens {ids}: name it by raw form or integer id"
        near = difflib.get_close_matches(token, list(self._by_text), n=n, cutoff=0.6)
        hint = f"; nearest vocabulary entries: {', '.join(repr(t) for t in near)}" if near else ""
        return f"{token!r} is not a token of the target's vocabulary{hint}"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, size: int) -> Vocabulary:
        ids = list(range(size))
        # the model's output layer may be larger than the tokenizer; such ids get a placeholder raw form
        raw = [t if t is not None else f"<unused-{i}>" for i, t in enumerate(tokenizer.convert_ids_to_tokens(ids))]
        text = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
        return cls(raw, text)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"format": "logitpred-vocab/1", "raw": self.raw, "text": self.text}))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        obj = json.loads(path.read_text())
        if obj.get("format") != "logitpred-vocab/1":
            raise ValueError(f"{path}: not a logitpred vocabulary file (format {obj.get('format')!r})")
        return cls(obj["raw"], obj["text"])
