"""What the human form needs from a suite: prompts in order, vocabulary autocomplete, the first target token of a typed
continuation, answers turned into standard ``Prediction``s, and practice feedback computed with ``evals.metrics``.

Only the practice split's truth is ever loaded here (``truth_split("practice")``): the server has no sealed truth in
memory to leak. A typed continuation is tokenized on its own with the suite's tokenizer and only its first token is
scored (the harness predicts one next token); for the byte-level BPE of the default target a word with its leading
space (" Paris") is one token whether or not the prompt precedes it, which is why the page shows the split live.

Typed text is first normalized to NFC: an accent typed as a combining mark (" cafe" + U+0301, as some keyboards send)
would otherwise tokenize as " ca", "fe", ... instead of " café". It is then encoded as plain text: a participant typing
``<|endoftext|>`` gets the tokens of those characters, never the control token (``encode_special_tokens``); the
end-of-text token itself can still be picked from the vocabulary suggestions. When the token that counts is not exactly
the typed text (several tokens, or a first token holding only part of a character, found from the tokens' character
offsets, not by looking for U+FFFD, which a participant may type), ``read`` says so in a warning the page shows.
"""

from __future__ import annotations

import bisect
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictors.format import Prediction, PredictionError, densify
from tasks.suite import SPLITS, Prompt, Suite

from ..metrics import cross_entropy_loss, entropy, kl_divergence

MAX_CANDIDATES = 20
SUM_TOL = 1e-6  # the page works in tenths of a percent; this only absorbs float rounding of those
TOP_K = 10


def nfc(text: str) -> str:
    """Unicode NFC: composed accents, as the tokenizer's training text mostly has them."""
    return unicodedata.normalize("NFC", text)


class AnswerError(ValueError):
    """An answer cannot be accepted; the message says which candidate and how to fix it."""


@dataclass(frozen=True)
class Candidate:
    text: str  # what the participant typed (NFC) or picked
    token_id: int  # the target token it maps to: the first token of ``text``, or the picked one
    p: float  # a fraction in (0, 1]
    warning: str | None = None  # the token that counts is not exactly ``text`` (see ``Game.read``); not stored


    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "token_id": self.token_id, "p": self.p}


class Game:
    def __init__(self, suite: Suite) -> None:
        from tokenizers import Tokenizer

        self.suite = suite
        self.vocab = suite.vocabulary
        self.background = suite.background
        self.tokenizer = Tokenizer.from_file(str(suite.path / "tokenizer" / "tokenizer.json"))
        self.tokenizer.encode_special_tokens = True  # typed "<|endoftext|>" is text, not the control token
        self.prompts = {s: suite.prompts(s) for s in SPLITS}
        self.split_of = {p.id: s for s in SPLITS for p in self.prompts[s]}
        ids, logp, nxt = suite.truth_split("practice")  # practice only, by design (see the module docstring)
        self._truth = {pid: (logp[i], int(nxt[i])) for i, pid in enumerate(ids)}
        order = sorted(range(len(self.vocab)), key=lambda i: self.vocab.text[i])
        self._sorted_ids = np.array(order, dtype=np.int64)
        self._sorted_text = [self.vocab.text[i] for i in order]

    # --- prompts -----------------------------------------------------------------------------------------------------
    def prompt(self, prompt_id: str) -> tuple[str, Prompt]:
        split = self.split_of.get(prompt_id)
        if split is None:
            raise KeyError(f"unknown prompt id {prompt_id!r}: not in suite {self.suite.name!r}")
        return split, next(p for p in self.prompts[split] if p.id == prompt_id)

    def next_prompt(self, split: str, answered: set[str]) -> tuple[int, Prompt] | None:
        """The first prompt of ``split`` (suite order) not yet answered, with its index; None when all are done."""
        for i, p in enumerate(self.prompts[split]):
            if p.id not in answered:
                return i, p
        return None

    # --- vocabulary --------------------------------------------------------------------------------------------------
    def token(self, tid: int) -> dict[str, Any]:
        return {"id": tid, "text": self.vocab.text[tid], "raw": self.vocab.raw[tid]}

    def complete(self, prefix: str, limit: int = 12) -> list[dict[str, Any]]:
        """Vocabulary tokens whose text starts with ``prefix`` (NFC; or with a space and it), commonest first."""
        prefix = nfc(prefix)
        if not prefix:
            return []
        found: list[np.ndarray] = []
        for q in {prefix, " " + prefix} if not prefix.startswith(" ") else {prefix}:
            lo = bisect.bisect_left(self._sorted_text, q)
            hi = bisect.bisect_left(self._sorted_text, q + "\U0010ffff")
            found.append(self._sorted_ids[lo:hi])
        ids = np.unique(np.concatenate(found))
        if ids.size > limit:  # the train unigram ranks them: the likeliest completions first
            ids = ids[np.argpartition(-self.background[ids], limit - 1)[:limit]]
        ids = ids[np.argsort(-self.background[ids], kind="stable")]
        return [self.token(int(i)) for i in ids]

    def encode(self, text: str) -> Any:
        """The tokenizer's encoding of ``text`` as plain text (special-token strings are not control tokens)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def tokenize(self, text: str) -> list[dict[str, Any]]:
        return self.read(text)["tokens"]

    def read(self, typed: str) -> dict[str, Any]:
        """How a typed continuation maps to the target's tokens: its NFC text, all its tokens, the first (the one that
        counts), whether that first token is only part of a character, and a warning when the first token's text is
        not exactly the (normalized) typed text; None when it is."""
        text = nfc(typed)
        enc = self.encode(text)
        ids, offsets = enc.ids, enc.offsets
        tokens = [self.token(t) for t in ids]
        # a character split over tokens: the next token starts inside the first token's characters
        partial = len(ids) > 1 and offsets[1][0] < offsets[0][1]
        warning = None
        if ids and (partial or self.vocab.text[ids[0]] != text):
            first = f"token {ids[0]}, {self.vocab.text[ids[0]]!r}"
            if partial:
                char = text[offsets[0][1] - 1]
                warning = (f"{text!r} is {len(ids)} tokens and the first ({first}) holds only part of the character "
                           f"{char!r} (U+{ord(char):04X}): that partial token is the one that counts")
            elif len(ids) > 1:
                warning = f"{text!r} is {len(ids)} tokens: only the first ({first}) counts"
            else:
                warning = f"{text!r} becomes {first}"
        return {"text": text, "normalized": text != typed, "tokens": tokens, "partial": partial, "warning": warning}

    # --- answers -----------------------------------------------------------------------------------------------------
    def resolve(self, items: list[dict[str, Any]]) -> list[Candidate]:
        """Map typed or picked candidates to target tokens and check the numbers; raise AnswerError on any problem."""
        if not items:
            raise AnswerError("name at least one candidate continuation")
        if len(items) > MAX_CANDIDATES:
            raise AnswerError(f"{len(items)} candidates: at most {MAX_CANDIDATES}")
        out: list[Candidate] = []
        for n, item in enumerate(items, 1):
            text, tid, p = item["text"], item.get("token_id"), item["p"]
            where = f"candidate {n} ({text!r})"
            if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p <= 1):
                raise AnswerError(f"{where}: probability {p!r} must be above 0% and at most 100%")
            if tid is not None:
                if not 0 <= tid < len(self.vocab):
                    raise AnswerError(f"{where}: token id {tid} is outside the vocabulary [0, {len(self.vocab)})")
                if nfc(text) != nfc(self.vocab.text[tid]):
                    raise AnswerError(f"{where}: token {tid} is {self.vocab.text[tid]!r}, not {text!r}; pick it again")
                text = self.vocab.text[tid]  # the picked token's own text
                warning = None
            else:
                read = self.read(text)
                if not read["tokens"]:
                    raise AnswerError(f"{where}: the text maps to no token; type at least one character")
                text, tid, warning = read["text"], read["tokens"][0]["id"], read["warning"]
            for c in out:
                if c.token_id == tid:
                    raise AnswerError(f"{where} and {c.text!r} both start with the token {self.vocab.text[tid]!r}: "
                                      "merge them into one candidate (only the first token counts)")
            out.append(Candidate(text, int(tid), float(p), warning))
        total = sum(c.p for c in out)
        if total > 1 + SUM_TOL:
            raise AnswerError(f"probabilities add up to {100 * total:.1f}%, over 100%: lower some of them")
        return out

    def check(self, prompt_id: str, candidates: list[Candidate], rest: str) -> tuple[Prediction, np.ndarray]:
        """The standard prediction of an answer and its full distribution (the format's own validator decides)."""
        pred = Prediction(prompt_id, [(c.token_id, c.p) for c in candidates], rest)
        try:
            return pred, densify(pred, self.vocab, self.background)
        except PredictionError as e:
            raise AnswerError(str(e)) from e

    def feedback(self, prompt_id: str, q: np.ndarray) -> dict[str, Any]:
        """Practice feedback: the target's top 10 (with what the answer gave each), the realized token, KL and CE."""
        logp, nxt = self._truth[prompt_id]  # KeyError for sealed prompts: there is no sealed truth here
        t, q2, ids = logp[None, :], q[None, :], np.array([nxt])
        top = np.argpartition(-logp, TOP_K)[:TOP_K]  # a full argsort of the vocabulary costs ~10x more per answer
        top = top[np.lexsort((top, -logp[top]))]  # by probability, ties by id (as a stable argsort would)
        return {
            "top": [{**self.token(int(i)), "p": float(np.exp(logp[i])), "yours": float(q[i])} for i in top],
            "realized": {**self.token(nxt), "p": float(np.exp(logp[nxt])), "yours": float(q[nxt])},
            "kl_nats": float(kl_divergence(t, q2)[0]),
            "ce_nats": float(cross_entropy_loss(q2, ids)[0]),
            "target_ce_nats": float(cross_entropy_loss(np.exp(t.astype(np.float64)), ids)[0]),
            "target_entropy_nats": float(entropy(t)[0]),
        }
