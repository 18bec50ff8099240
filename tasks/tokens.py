"""Token streams of a corpus's train part, on the target's tokenizer, cached.

Corpus-statistics predictors (unigram, n-gram, suffix match) learn only from these streams: the held-out documents
that prompts are cut from never enter them (``split_documents`` decides, by source document).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from .corpora import corpus_name, read_corpus, split_documents
from .io import atomic_write, loads_json
from .paths import data_dir


@dataclass(frozen=True)
class TokenStream:
    tokens: np.ndarray  # uint32, all train documents concatenated
    offsets: np.ndarray  # int64, document k is tokens[offsets[k]:offsets[k+1]]
    doc_ids: list[str]

    def documents(self) -> list[np.ndarray]:
        return [self.tokens[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def _encode_all(tokenizer: Any, texts: list[str], batch: int = 512) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"])
    return out


def train_tokens(
    corpus: str, tokenizer: Any, tokenizer_sha256: str, *, seed: int = 0, heldout_fraction: float = 0.1
) -> TokenStream:
    """The train part of ``corpus`` tokenized by the target's tokenizer; cached by corpus content, split and tokenizer.

    The cache file (``<data_dir>/tokens/*.npz``) is written atomically (``tasks.io.atomic_write``); an unreadable one
    (e.g. left by an older version killed mid-write) is rebuilt.
    """
    docs = read_corpus(corpus)
    train, _ = split_documents(docs, seed=seed, heldout_fraction=heldout_fraction)
    h = hashlib.sha256()
    for d in train:
        h.update(d.id.encode() + b"\0" + d.text.encode() + b"\0")
    key = hashlib.sha256(f"{h.hexdigest()}:{tokenizer_sha256}".encode()).hexdigest()[:16]
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
