"""Token streams of a corpus's train part, on the target's tokenizer, cached.

Corpus-statistics predictors (unigram, n-gram, suffix match) learn only from these streams: the held-out documents
that prompts are cut from never enter them (``split_documents`` decides, by source document). All corpus text is
encoded by ``encode_text``: special-token strings in it are text, never control tokens.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .corpora import corpus_name, read_corpus, split_documents
from .io import atomic_write, loads_json
from .paths import data_dir

ENCODING = "text-specials/1"  # encode_text's rule; part of the token cache key


@dataclass(frozen=True)
class TokenStream:
    tokens: np.ndarray  # uint32, all train documents concatenated
    offsets: np.ndarray  # int64, document k is tokens[offsets[k]:offsets[k+1]]
    doc_ids: list[str]

    def documents(self) -> list[np.ndarray]:
        return [self.tokens[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def encode_text(tokenizer: Any, texts: str | Sequence[str]) -> Any:
    """Token ids of corpus text: ``list[int]`` for one string, ``list[list[int]]`` for a sequence of them.

    No special tokens are added (no BOS, no EOS), and special-token strings *in* the text (``<|endoftext|>``,
    ``<|im_start|>``, ``<bos>``) are encoded as the text they are, never as control tokens: a plain
    ``tokenizer(text, add_special_tokens=False)`` still maps ``"<|endoftext|>"`` to its special id, so this passes
    ``split_special_tokens=True``. Added tokens the tokenizer does not mark special (Gemma's ``"\\n\\n"`` or
    ``"<table>"``) are ordinary text and kept. Every place the harness encodes corpus or prompt text uses this.
    """
    if isinstance(texts, str):
        return list(tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]]


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of every control token of ``tokenizer``: its named special tokens and all added tokens marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False))
    return ids


def _encode_all(tokenizer: Any, texts: list[str], batch: int = 512) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(encode_text(tokenizer, texts[i : i + batch]))
    return out


def train_tokens(
    corpus: str, tokenizer: Any, tokenizer_sha256: str, *, seed: int = 0, heldout_fraction: float = 0.1
) -> TokenStream:
    """The train part of ``corpus`` tokenized by the target's tokenizer (``encode_text``); cached by corpus content,
    split, tokenizer and ``ENCODING``.

    The cache file (``<data_dir>/tokens/*.npz``) is written atomically (``tasks.io.atomic_write``); an unreadable one
    (e.g. left by an older version killed mid-write) is rebuilt.
    """
    docs = read_corpus(corpus)
    train, _ = split_documents(docs, seed=seed, heldout_fraction=heldout_fraction)
    h = hashlib.sha256()
    for d in train:
        h.update(d.id.encode() + b"\0" + d.text.encode() + b"\0")
    # ENCODING names how text becomes ids (special-token strings as text): caches of an older encoding are not reused
    key = hashlib.sha256(f"{h.hexdigest()}:{tokenizer_sha256}:{ENCODING}".encode()).hexdigest()[:16]
    path = data_dir() / "tokens" / f"{corpus_name(corpus)}-s{seed}-h{heldout_fraction}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return TokenStream(z["tokens"], z["offsets"], loads_json(str(z["doc_ids"])))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable cache: rebuilt below
    ids = _encode_all(tokenizer, [d.text for d in train])
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.fromiter((t for x in ids for t in x), dtype=np.uint32, count=int(offsets[-1]))
    stream = TokenStream(tokens, offsets, [d.id for d in train])
    atomic_write(path, lambda f: np.savez(f, tokens=tokens, offsets=offsets, doc_ids=np.array(json.dumps(stream.doc_ids))))
    return stream


def unigram_distribution(tokens: np.ndarray, vocab_size: int, *, alpha: float = 1.0) -> np.ndarray:
    """Add-``alpha`` smoothed token frequencies, float64, strictly positive, summing to 1."""
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size)[:vocab_size].astype(np.float64)
    return (counts + alpha) / (counts.sum() + alpha * vocab_size)
