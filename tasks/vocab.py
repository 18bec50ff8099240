"""The target's vocabulary as predictors name it: each token id with its raw form and its decoded text.

Predictions name candidates by decoded text (``" Paris"``), by raw tokenizer form (``"ĠParis"``) or by integer id.
Stored as ``vocab.json`` in each suite so predictors need no tokenizer library.

How a name is looked up (``lookup``):

1. The exact name: the ids whose decoded text is the name, together with the id whose raw form is the name.
2. Only if the exact name names no token: its Unicode NFC form, by the same rule. A name typed in decomposed form
   (NFD, as macOS keyboards may produce: ``" cafe\\u0301"``) finds the token of ``" café"``; the tokenizer's own texts
   and raw forms are all NFC, so the exact step decides whenever the name is written as the tokenizer writes it.

A name resolves only when it names exactly one id. A name that can mean several tokens is refused as ambiguous with
all the ids it names: several ids decode to the same text (SmolLM2's 265 byte-fallback pieces that decode to U+FFFD,
for example), or the name is one token's decoded text and another token's raw form (SmolLM2's ``"¢"`` is the decoded
text of id 26387 and the raw form of id 112). Such a token is named by integer id (always unique) or by a raw form
that is itself unambiguous; the refusal lists only those forms.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import atomic_write_text, read_json

FORMAT = "logitpred-vocab/1"
LOOKUP_RULE = "names are matched exactly, then in Unicode NFC form"


@dataclass
class Vocabulary:
    """Token ids with their raw forms and decoded texts, and the lookup of names (see the module docstring)."""

    raw: list[str]  # tokenizer's own form of each id (e.g. "ĠParis")
    text: list[str]  # what each id decodes to on its own (e.g. " Paris")
    _unique: dict[str, int] = field(init=False, repr=False, compare=False)
    _ambiguous: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    near_match_searches: int = field(default=0, init=False, repr=False, compare=False)  # difflib searches so far

    def __post_init__(self) -> None:
        if len(self.raw) != len(self.text):
            raise ValueError("raw and text vocabularies differ in length")
        named: dict[str, list[int]] = {}
        for i, t in enumerate(self.text):
            named.setdefault(t, []).append(i)
        for i, r in enumerate(self.raw):
            named.setdefault(r, []).append(i)
        self._unique, self._ambiguous = {}, {}
        for name, ids in named.items():
            distinct = sorted(set(ids))  # a token whose raw form is its own text is still one token
            if len(distinct) == 1:
                self._unique[name] = distinct[0]
            else:
                self._ambiguous[name] = tuple(distinct)

    def __len__(self) -> int:
        return len(self.raw)

    def canonical(self, name: str) -> str:
        """The form of ``name`` that lookup uses: ``name`` if it names any token, else its NFC form."""
        if name in self._unique or name in self._ambiguous:
            return name
        return unicodedata.normalize("NFC", name)

    def ids_named(self, name: str) -> tuple[int, ...]:
        """Every id ``name`` can mean (as decoded text or raw form; exact name first, then NFC): () if none."""
        key = self.canonical(name)
        if key in self._unique:
            return (self._unique[key],)
        return self._ambiguous.get(key, ())

    def lookup(self, name: str) -> int | None:
        """Id of the one token ``name`` names (decoded text or raw form); None if it names none or several."""
        tid = self._unique.get(name)
        if tid is not None or name in self._ambiguous:
            return tid
        return self._unique.get(unicodedata.normalize("NFC", name))

    def intended(self, name: str) -> int | None:
        """The id a writer means by ``name``: the one token it names or, when it is ambiguous, the one token whose
        decoded text it is (predictors write decoded text); None if it names no token or is the text of several."""
        ids = self.ids_named(name)
        if len(ids) <= 1:
            return ids[0] if ids else None
        key = self.canonical(name)
        as_text = [i for i in ids if self.text[i] == key]
        return as_text[0] if len(as_text) == 1 else None

    def is_ambiguous(self, name: str) -> bool:
        """Whether ``name`` names several tokens (and so is refused)."""
        return len(self.ids_named(name)) > 1

    def unique_forms(self, token_id: int) -> list[str | int]:
        """The ways to name ``token_id`` that resolve to it alone: its decoded text and raw form where unique, its id."""
        forms: list[str | int] = [f for f in dict.fromkeys((self.text[token_id], self.raw[token_id]))
                                  if self.lookup(f) == token_id]
        return [*forms, token_id]

    def near_matches(self, name: str, n: int = 3) -> list[str]:
        """The nearest unambiguous names (difflib over the whole vocabulary: ~0.1 s; counted in near_match_searches)."""
        self.near_match_searches += 1
        return difflib.get_close_matches(name, list(self._unique), n=n, cutoff=0.6)

    def explain_unknown(self, name: str, n: int = 3, *, suggest: bool = True) -> str:
        """Why ``name`` is not a single token of this vocabulary; with ``suggest``, the nearest entries to fix it."""
        ids = self.ids_named(name)
        if len(ids) > 1:
            return self.explain_ambiguous(name, ids)
        shown = repr(name) if unicodedata.is_normalized("NFC", name) else f"{name!r} ({ascii(name)})"
        msg = f"{shown} is not a token of the target's vocabulary ({LOOKUP_RULE})"
        near = self.near_matches(unicodedata.normalize("NFC", name), n) if suggest else []
        return msg + (f"; nearest vocabulary entries: {', '.join(repr(t) for t in near)}" if near else "")

    def explain_ambiguous(self, name: str, ids: tuple[int, ...] | None = None) -> str:
        """The refusal of an ambiguous name: every id it names, and for each only the forms that name it alone."""
        ids = ids or self.ids_named(name)
        how = []
        for i in ids:
            forms = [f"{'text' if f == self.text[i] else 'raw'} {f!r}" for f in self.unique_forms(i)[:-1]]
            how.append(f"{i} ({', '.join(forms)})" if forms else str(i))
        key = self.canonical(name)
        as_text = [i for i in ids if self.text[i] == key]
        as_raw = [i for i in ids if self.raw[i] == key]
        parts = [f"the decoded text of token{'s' if len(as_text) > 1 else ''} {', '.join(map(str, as_text))}"
                 if len(as_text) <= 3 else f"the decoded text of {len(as_text)} tokens"] if as_text else []
        parts += [f"the raw form of token {as_raw[0]}"] if as_raw else []
        what = " and ".join(parts) + ("" if key == name else " (in NFC form)")
        return (f"{name!r} is ambiguous: it names {len(ids)} tokens ({what}); name the one you mean by integer id "
                f"(list form [[id, p]]) or by a form shown beside it (that form names it alone): {'; '.join(how)}")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, size: int) -> Vocabulary:
        """The vocabulary of ``tokenizer`` padded to the model's output size ``size``."""
        ids = list(range(size))
        # the model's output layer may be larger than the tokenizer; such ids get a placeholder raw form
        raw = [t if t is not None else f"<unused-{i}>" for i, t in enumerate(tokenizer.convert_ids_to_tokens(ids))]
        text = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
        return cls(raw, text)

    def save(self, path: Path) -> None:
        """Write ``vocab.json`` (atomically)."""
        import json

        atomic_write_text(path, json.dumps({"format": FORMAT, "raw": self.raw, "text": self.text}))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """Read ``vocab.json``: strict JSON (a repeated key is refused, naming it), BOM-tolerant, shape checked."""
        try:
            obj = read_json(path)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and DuplicateKeyError are ValueErrors
            raise ValueError(f"{path}: not a valid vocabulary file ({e})") from e
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}: not a logitpred vocabulary file (format {got!r})")
        raw, text = obj.get("raw"), obj.get("text")
        for key, value in (("raw", raw), ("text", text)):
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise ValueError(f"{path}: {key!r} must be a list of strings")
        return cls(raw, text)
