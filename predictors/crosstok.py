"""Cross-tokenizer mapping: a helper's next-token distribution, over *its* vocabulary, onto the target's tokens.

First-token marginalization. Each helper token stands for a byte string ``b`` that would follow the prompt. The target
would emit that text starting with one token: the first token of the target's canonical encoding of ``b``. So

    q_target(t) = sum over helper tokens h with first_target_token(bytes(h)) = t of p_helper(h)

for the helper tokens covering ``coverage`` of the helper's mass (all of them by default); the mass of the tokens left
out or that cannot be mapped (special tokens other than end-of-text, empty strings) is spread over the target tokens
that received nothing, by the declared rest rule (``unigram``: the suite's train unigram; ``uniform``).

How a helper token becomes bytes: byte-level BPE raw forms (GPT-2 style, ``Ġ`` for space) through the inverse
byte-to-unicode table; SentencePiece-style raw forms (``▁`` for space) with byte fallback (``<0x0A>``) directly; other
tokenizers by decoding the single token. How bytes become the first target token: the target tokenizer's encoding of
the text (batched over the whole vocabulary once and cached), checked to be a byte prefix of ``b``; where that fails
(invalid UTF-8 such as a lone byte-fallback piece, or a target that adds a dummy prefix) the longest target token that
is a byte prefix of ``b``. Helper end-of-text maps to the target's end-of-text.

The approximation, and why it is not exact: (1) the target's tokenization of ``prompt + continuation`` may merge
across the prompt boundary or split a word differently than the text alone; (2) a helper token shorter than the
target's first token (helper ``" Par"`` where the target would say ``" Paris"``) puts its mass on a shorter target
token, because the helper's later tokens are not looked at; (3) the helper's prompt may end on a token boundary the
helper would not have chosen. ``tests/predictors/test_crosstok.py`` measures the error where it can be checked: the
target's own distribution through its own tokenizer, and through another tokenizer and back.

Left out: looking ahead more than one helper token (exact marginalization needs a search over helper continuations).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from tasks.io import atomic_save_npy
from tasks.paths import data_dir

REST_RULES = ("unigram", "uniform")
MIN_REST = 1e-6  # as predictors.format.MIN_REST
MIN_MAPPED_FRACTION = 0.5  # a helper vocabulary mapping less than this is refused as unmappable
EOT_NAMES = ("<|endoftext|>", "<|end_of_text|>")
FORMAT = 1  # version of the cached table; bump when the mapping rule changes


class MappingError(ValueError):
    """A helper's vocabulary cannot be mapped onto the target's."""


def check_settings(coverage: float, rest: str) -> None:
    if not 0.0 < coverage <= 1.0:
        raise MappingError(f"coverage must be in (0, 1], got {coverage}")
    if rest not in REST_RULES:
        raise MappingError(f"rest rule {rest!r} is not one of {', '.join(REST_RULES)}")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = str(getattr(backend, "decoder", None))  # e.g. "ByteLevel(...)" or "Sequence([Replace("▁", " "), ...])"
    if "ByteLevel" in text:
        return "bytelevel"
    if "\u2581" in text or "▁" in text or "Metaspace" in text:
        return "metaspace"
    return "decode"


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _eot_id(tokenizer: Any) -> int | None:
    """End-of-text: ``<|endoftext|>`` where it is a special token (chat models' EOS is end-of-turn), else EOS."""
    vocab = tokenizer.get_vocab()
    specials = _special_ids(tokenizer)
    for name in EOT_NAMES:
        if vocab.get(name) in specials:
            return int(vocab[name])
    return tokenizer.eos_token_id


def token_bytes(tokenizer: Any, size: int) -> list[bytes | None]:
    """The byte string each token id stands for; None for special, unused or out-of-tokenizer ids."""
    kind = _decoder_kind(tokenizer)
    specials = _special_ids(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    bdec = _byte_decoder() if kind == "bytelevel" else {}
    out: list[bytes | None] = []
    for i, r in enumerate(raw):
        if r is None or i in specials:
            out.append(None)
        elif kind == "bytelevel":
            try:
                out.append(bytes(bdec[c] for c in r))
            except KeyError:  # an added token stored in plain text
                out.append(r.encode())
        elif kind == "metaspace":
            if len(r) == 6 and r.startswith("<0x") and r.endswith(">"):
                out.append(bytes([int(r[3:5], 16)]))
            else:
                out.append(r.replace("▁", " ").encode())
        else:
            # no byte table for this kind: a token is whole text when its decoded text encodes back to it (a piece
            # of a multi-byte character decodes to U+FFFD, which does not); not "contains U+FFFD", which real text may
            text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
            whole = "\ufffd" not in text or tokenizer.encode(text, add_special_tokens=False) == [i]
            out.append(text.encode() if whole else None)
    out += [None] * (size - len(out))
    return [b if b else None for b in out]


@dataclass
class TokenMap:
    """``table[h]``: the target token that helper token ``h`` starts with (-1: unmapped)."""

    table: np.ndarray  # int64, (helper vocab,)
    target_size: int

    @property
    def mapped_fraction(self) -> float:
        return float((self.table >= 0).mean())

    @classmethod
    def build(cls, helper_tok: Any, target_tok: Any, target_size: int, helper_size: int | None = None, *,
              cache: bool = True) -> TokenMap:
        """The table for a helper tokenizer onto a target tokenizer, cached under ``<data_dir>/crosstok``."""
        from tasks.target import tokenizer_sha256

        helper_size = helper_size or len(helper_tok)
        key = f"{tokenizer_sha256(helper_tok)[:16]}-{tokenizer_sha256(target_tok)[:16]}-{helper_size}-{target_size}"
        path = data_dir() / "crosstok" / f"v{FORMAT}-{key}.npy"
        if cache and path.is_file():
            return cls(np.load(path), target_size)
        table = first_token_table(helper_tok, target_tok, target_size, helper_size)
        tm = cls(table, target_size)
        if tm.mapped_fraction < MIN_MAPPED_FRACTION:
            raise MappingError(
                f"the helper's vocabulary cannot be mapped onto the target's: only {tm.mapped_fraction:.1%} of its "
                f"{helper_size} tokens have a byte string that starts with a target token (need at least "
                f"{MIN_MAPPED_FRACTION:.0%}); use a helper whose tokenizer decodes to text")
        if cache:
            atomic_save_npy(path, table)
        return tm

    def map_probs(self, p: np.ndarray, *, coverage: float = 1.0, rest: str = "unigram",
                  background: np.ndarray | None = None, chunk: int = 16) -> np.ndarray:
        """Map helper probabilities ``p`` (``(n, helper vocab)``, rows summing to 1) to ``(n, target vocab)`` rows.

        Returns strictly positive float64 rows summing to 1; the unmapped and uncovered mass (at least ``MIN_REST``)
        sits on tokens with no mapped mass, spread by ``rest``. Tokens with mapped mass get nothing from the rest (the
        format's rule for a ``top`` list).
        """
        check_settings(coverage, rest)
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.table.size:
            raise MappingError(f"helper distribution has shape {p.shape}; expected (n, {self.table.size})")
        V = self.target_size
        if rest == "unigram":
            if background is None or background.shape != (V,):
                raise MappingError("rest 'unigram' needs the suite's background unigram over the target vocabulary")
            bg = np.asarray(background, dtype=np.float64)
        else:
            bg = np.ones(V)
        valid = self.table >= 0
        out = np.zeros((p.shape[0], V))
        for a in range(0, p.shape[0], chunk):
            block = p[a : a + chunk]
            if coverage < 1.0:
                block = _keep_top_mass(block, coverage)
            w = block[:, valid]
            rows = np.repeat(np.arange(block.shape[0]), w.shape[1])
            idx = rows * V + np.tile(self.table[valid], block.shape[0])
            out[a : a + chunk] = np.bincount(idx, weights=w.ravel(), minlength=block.shape[0] * V).reshape(-1, V)
        # As the prediction format does: at least MIN_REST stays for the tokens nothing mapped to, so every row is
        # strictly positive (a zero where the target has mass would make the KL infinite).
        total = out.sum(axis=1)
        scale = np.where(total > 1.0 - MIN_REST, (1.0 - MIN_REST) / np.maximum(total, 1e-300), 1.0)
        out *= scale[:, None]
        left = 1.0 - out.sum(axis=1)
        empty = out <= 0
        spread = np.where(empty, bg[None, :], 0.0)
        norm = spread.sum(axis=1, keepdims=True)
        out += np.divide(spread * left[:, None], norm, out=np.zeros_like(spread), where=norm > 0)
        return out / out.sum(axis=1, keepdims=True)

    def map_logprobs(self, logp: np.ndarray, **kw: Any) -> np.ndarray:
        return self.map_probs(np.exp(np.asarray(logp, dtype=np.float64)), **kw)


def _keep_top_mass(p: np.ndarray, coverage: float) -> np.ndarray:
    """Zero all but each row's most likely tokens whose cumulative mass first reaches ``coverage``."""
    order = np.argsort(-p, axis=1)
    sorted_p = np.take_along_axis(p, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the tokens ranked above
    keep_sorted = before < coverage
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return np.where(keep, p, 0.0)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: 3x faster than transformers' wrapper on 262k strings
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def first_token_table(helper_tok: Any, target_tok: Any, target_size: int, helper_size: int) -> np.ndarray:
    """For each helper token, the first target token of its byte string (see the module docstring)."""
    hbytes = token_bytes(helper_tok, helper_size)
    tbytes = token_bytes(target_tok, target_size)
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(tbytes):
        if b is not None and b not in by_bytes:
            by_bytes[b] = i
    max_len = max((len(b) for b in by_bytes), default=0)

    def longest_prefix(b: bytes) -> int:
        for k in range(min(len(b), max_len), 0, -1):
            t = by_bytes.get(b[:k])
            if t is not None:
                return t
        return -1

    table = np.full(helper_size, -1, dtype=np.int64)
    texts, where = [], []
    for h, b in enumerate(hbytes):
        if b is None:
            continue
        try:
            texts.append(b.decode("utf-8"))
            where.append(h)
        except UnicodeDecodeError:
            table[h] = longest_prefix(b)
    unk = getattr(target_tok, "unk_token_id", None)
    for a in range(0, len(texts), 4096):
        enc = _encode(target_tok, texts[a : a + 4096])
        for h, ids in zip(where[a : a + 4096], enc, strict=True):
            t = ids[0] if ids else -1
            tb = tbytes[t] if 0 <= t < target_size else None
            if t == unk or tb is None or not hbytes[h].startswith(tb):
                t = longest_prefix(hbytes[h])
            table[h] = t
    h_eot, t_eot = _eot_id(helper_tok), _eot_id(target_tok)
    if h_eot is not None and t_eot is not None and h_eot < helper_size and t_eot < target_size:
        table[h_eot] = t_eot
    return table

