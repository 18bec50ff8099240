"""Input distributions D for rare-event estimation: products of per-position token distributions, and suite prompts.

- ``ProductDistribution`` (Wu & Hilton 2024, "Estimating the Probabilities of Rare Outputs in Language Models", §3):
  a fixed prefix of target token ids, then ``k`` free positions, each drawn independently from a weighted token list.
  Sampling, log-probability of an input, and exact enumeration of the support (``enumerate``; size ``prod |S_i|``).
- ``SuiteDistribution``: a suite split's prompts, uniform (inputs of varying length; the exact mean is over all).

Token lists (``token_list``) come from a corpus's *train* part (``tasks.tokens.train_tokens``), as Wu & Hilton built
theirs from text: the ``size`` most frequent target tokens whose decoded text matches a class, weighted by their train
frequency (+1). Classes (``TOKEN_CLASSES``): ``hex`` (digits and a-f, with or without a leading space), ``caps``
(a space and a capitalised word), ``english`` (a space and a lowercase word), ``code`` (brackets, operators,
punctuation runs and ``_``-identifiers).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOKEN_CLASSES = {
    "hex": re.compile(r"^ ?[0-9a-f]+$"),
    "caps": re.compile(r"^ [A-Z][a-z]+$"),
    "english": re.compile(r"^ [a-z]+$"),
    "code": re.compile(r"^ ?([(){}\[\];:=<>+\-*/%&|!.,#@]+|[A-Za-z]*_[A-Za-z_]+)$"),
}


class DistributionError(ValueError):
    """An input distribution that cannot be used (empty support, bad weights, unknown class)."""


@dataclass(frozen=True)
class ProductDistribution:
    """``prefix`` (target token ids before the free positions, may be empty), ``prefix_text`` (its text, for the
    behaviour tokenization check), ``ids[i]`` / ``probs[i]``: the support and probabilities of free position i."""

    id: str
    prefix: tuple[int, ...]
    prefix_text: str
    ids: tuple[np.ndarray, ...]
    probs: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not self.ids:
            raise DistributionError(f"distribution {self.id!r}: no free position")
        for i, (t, p) in enumerate(zip(self.ids, self.probs, strict=True)):
            if len(t) == 0 or len(t) != len(p) or len(set(t.tolist())) != len(t):
                raise DistributionError(f"distribution {self.id!r}, position {i}: an empty support, repeated tokens, "
                                        "or as many probabilities as tokens not given")
            if (p <= 0).any() or abs(float(p.sum()) - 1.0) > 1e-9:
                raise DistributionError(f"distribution {self.id!r}, position {i}: probabilities must be > 0 and sum "
                                        f"to 1 (sum {float(p.sum())!r})")

    @property
    def k(self) -> int:
        return len(self.ids)

    @property
    def support_size(self) -> int:
        return int(np.prod([len(t) for t in self.ids], dtype=object))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, k)`` int64 inputs drawn independently per position."""
        cols = [t[rng.choice(len(t), size=n, p=p)] for t, p in zip(self.ids, self.probs, strict=True)]
        return np.stack(cols, axis=1).astype(np.int64)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` float64 natural log of p_D(x) for inputs ``(n, k)``; ``-inf`` for an input outside the support."""
        x = np.asarray(x, dtype=np.int64)
        out = np.zeros(len(x))
        for i, (t, p) in enumerate(zip(self.ids, self.probs, strict=True)):
            table = dict(zip(t.tolist(), np.log(p).tolist(), strict=True))
            out += np.array([table.get(v, -np.inf) for v in x[:, i].tolist()])
        return out

    def log_table(self, vocab_size: int) -> np.ndarray:
        """``(k, V)`` float64: log p_i(v), ``-inf`` off the support (what gradient proposals tilt)."""
        out = np.full((self.k, vocab_size), -np.inf)
        for i, (t, p) in enumerate(zip(self.ids, self.probs, strict=True)):
            out[i, t] = np.log(p)
        return out

    def enumerate(self, batch: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every input of the support in lexicographic order of positions, in blocks: ``(x (b, k), log p (b,))``."""
        logs = [np.log(p) for p in self.probs]
        idx = itertools.product(*(range(len(t)) for t in self.ids))
        while True:
            block = np.array(list(itertools.islice(idx, batch)), dtype=np.int64).reshape(-1, self.k)
            if not len(block):
                return
            x = np.stack([self.ids[i][block[:, i]] for i in range(self.k)], axis=1)
            lp = np.sum([logs[i][block[:, i]] for i in range(self.k)], axis=0)
            yield x.astype(np.int64), lp

    def key(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "product", "prefix": list(self.prefix),
                "ids": [t.tolist() for t in self.ids], "probs": [p.tolist() for p in self.probs]}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()


def token_list(name: str, tokens: np.ndarray, tokenizer: Any, *, size: int = 16,
               exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` most frequent tokens of class ``name`` (``TOKEN_CLASSES``) in ``tokens`` (a train token stream),
    and their probabilities (train frequency + 1, normalized). Raises ``DistributionError`` for an unknown class or
    fewer than ``size`` matching tokens."""
    if name not in TOKEN_CLASSES:
        raise DistributionError(f"unknown token class {name!r}: use one of {', '.join(TOKEN_CLASSES)}")
    pattern, skip = TOKEN_CLASSES[name], set(int(t) for t in exclude)
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    chosen = []
    for t in np.argsort(-counts, kind="stable"):
        if counts[t] == 0 or len(chosen) == size:
            break
        if int(t) not in skip and pattern.match(tokenizer.decode([int(t)])):
            chosen.append(int(t))
    if len(chosen) < size:
        raise DistributionError(f"token class {name!r}: only {len(chosen)} tokens of the train text match, {size} "
                                "asked for")
    ids = np.array(chosen, dtype=np.int64)
    w = counts[ids].astype(np.float64) + 1.0
    return ids, w / w.sum()


@dataclass(frozen=True)
class SuiteDistribution:
    """A suite split's prompts, uniform: ``prompts`` are target token ids (without BOS)."""

    id: str
    suite: str
    split: str
    prompts: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.prompts:
            raise DistributionError(f"distribution {self.id!r}: the {self.split} split of {self.suite!r} is empty")

    @property
    def support_size(self) -> int:
        return len(self.prompts)

    def key(self) -> dict[str, Any]:
        h = hashlib.sha256(json.dumps([list(p) for p in self.prompts]).encode()).hexdigest()
        return {"id": self.id, "kind": "suite", "suite": self.suite, "split": self.split, "prompts_sha256": h}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()
