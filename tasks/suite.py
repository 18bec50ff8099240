"""Suites: versioned sets of held-out prompts cut from real text, with the target's truth cached beside them.

A suite folder (``<data_dir>/suites/<name>/``) holds ``manifest.json``, ``practice.jsonl``, ``sealed.jsonl`` (the
prompts), ``vocab.json``, ``background.npy`` (the train-part unigram) and ``tokenizer/``. Truth lives apart, under
``<data_dir>/truth/<name>/<version>-<target id>/``, one safetensors file per split, each verified by sha256 on load.

Prompts: held-out documents are shuffled with the suite's seed; each gets ``cuts_per_doc`` random cut points (at least
``min_context`` tokens in) where the decoded prompt text re-encodes to exactly the same ids. Whole documents go to one
split, so practice feedback never shows text from a sealed document.

The sealed commitment is sha256 over the sealed prompts file, then the sealed truth's log-probabilities (float32, C
order) and realized next-token ids (int64): publish it at build time, check it before scoring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .corpora import read_corpus, split_documents
from .paths import data_dir, sha256_file
from .vocab import Vocabulary

FORMAT = "logitpred-suite/1"
SPLITS = ("practice", "sealed")


class SuiteError(ValueError):
    """A suite is missing, stale or inconsistent."""


@dataclass(frozen=True)
class SuiteConfig:
    name: str
    corpus: str
    seed: int = 0
    heldout_fraction: float = 0.1
    practice: int = 200
    sealed: int = 200
    min_context: int = 16
    max_doc_tokens: int = 512
    cuts_per_doc: int | None = None  # None: one cut per document when there are enough documents, else more
    max_docs: int | None = None  # consider only this many held-out documents (tiny suites)


PRESETS: dict[str, SuiteConfig] = {
    "wiki": SuiteConfig("wiki", "wiki"),
    "news": SuiteConfig("news", "news"),
    "sotu": SuiteConfig("sotu", "sotu"),
    "tiny": SuiteConfig("tiny", "wiki", practice=6, sealed=6, max_doc_tokens=96, max_docs=40),
}


@dataclass(frozen=True)
class Prompt:
    id: str
    doc: str  # id of the document (passage) it was cut from
    text: str
    token_ids: tuple[int, ...]
    next_token_id: int  # the token that really followed in the source document


@dataclass
class Suite:
    path: Path
    manifest: dict[str, Any]
    _truth: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _prompts: dict[str, list[Prompt]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def target(self) -> dict[str, str]:
        return self.manifest["target"]

    @property
    def bos_ids(self) -> list[int]:
        return list(self.manifest["bos_ids"])

    @property
    def commitment(self) -> str | None:
        return self.manifest.get("commitment")

    def prompts(self, split: str) -> list[Prompt]:
        _check_split(split)
        if split not in self._prompts:
            self._prompts[split] = [
                Prompt(o["id"], o["doc"], o["text"], tuple(o["token_ids"]), o["next_token_id"])
                for o in _read_jsonl(self.path / f"{split}.jsonl")
            ]
        return list(self._prompts[split])

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary.load(self.path / "vocab.json")

    @cached_property
    def background(self) -> np.ndarray:
        """Smoothed unigram of the corpus's train part (float64, sums to 1): the ``rest: "unigram"`` background."""
        return np.load(self.path / "background.npy")

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path / "tokenizer")

    # --- truth -------------------------------------------------------------------------------------------------------
    @property
    def truth_dir(self) -> Path:
        return data_dir() / "truth" / self.name / f"{self.version}-{self.target['id']}"

    def has_truth(self) -> bool:
        record = self.truth_dir / "truth.json"
        return record.is_file() and "commitment" in json.loads(record.read_text()) and all(
            (self.truth_dir / f"{s}.safetensors").is_file() for s in SPLITS)

    def truth_split(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(prompt ids, log-probs float32 (n, vocab), realized next-token ids) of a split, verified by hash."""
        _check_split(split)
        if split not in self._truth:
            ids = [p.id for p in self.prompts(split)]
            self._truth[split] = (ids, *truth_loader(self, split)())
        return self._truth[split]

    def truth(self, prompt_id: str) -> np.ndarray:
        """Natural-log probabilities (float32, full vocabulary, logsumexp 0) of the target's next token."""
        for split in SPLITS:
            ids = [p.id for p in self.prompts(split)]
            if prompt_id in ids:
                return self.truth_split(split)[1][ids.index(prompt_id)]
        raise KeyError(f"prompt {prompt_id!r} is not in suite {self.name!r}")

    def compute_truth(self, target: Any, *, rebuild: bool = False, batch_size: int = 8,
                      on_progress: Callable[[str, int, int], None] | None = None) -> str:
        """Compute and cache truth for both splits with ``target`` (a ``tasks.Target``); returns the commitment."""
        from safetensors.numpy import save_file

        from .truth import compute_truth

        if target.identity.id != self.target["id"]:
            raise SuiteError(
                f"suite {self.name!r} was built for target {self.target['name']} ({self.target['id']}), "
                f"not {target.identity.name} ({target.identity.id}): rebuild the suite with this target"
            )
        if self.has_truth() and not rebuild:
            self.truth_split("sealed")  # verifies the hash
            return self.manifest["commitment"]
        self.truth_dir.mkdir(parents=True, exist_ok=True)
        hashes = {}
        for split in SPLITS:
            prompts = self.prompts(split)
            logp = compute_truth(
                target.model, prompts, bos_ids=self.bos_ids, batch_size=batch_size,
                on_progress=(lambda n, s=split, t=len(prompts): on_progress(s, n, t)) if on_progress else None,
            )
            nxt = np.array([p.next_token_id for p in prompts], dtype=np.int64)
            path = self.truth_dir / f"{split}.safetensors"
            save_file({"logp": logp, "next_token_id": nxt}, str(path))
            hashes[split] = sha256_file(path)
            self._truth.pop(split, None)
        record = {"suite": self.name, "version": self.version, "target": self.target, "sha256": hashes}
        (self.truth_dir / "truth.json").write_text(json.dumps(record, indent=2))
        commitment = self._commitment()
        (self.truth_dir / "truth.json").write_text(json.dumps({**record, "commitment": commitment}, indent=2))
        # A recomputation on other hardware may differ in the last float bits; the commitment then changes and the
        # new one must be published again (``logitpred truth`` prints it).
        self.manifest["commitment"] = commitment
        (self.path / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
        return commitment

    def _commitment(self) -> str:
        _, logp, nxt = self.truth_split("sealed")
        h = hashlib.sha256((self.path / "sealed.jsonl").read_bytes())
        h.update(np.ascontiguousarray(logp, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(nxt, dtype=np.int64).tobytes())
        return h.hexdigest()

    def verify_commitment(self) -> None:
        """Raise unless the sealed prompts and truth on disk hash to the commitment published at build time."""
        if not self.commitment:
            raise SuiteError(f"suite {self.name!r} has no commitment yet: run `logitpred truth --suite {self.name}`")
        if self._commitment() != self.commitment:
            raise SuiteError(f"suite {self.name!r}: sealed prompts or truth do not match the published commitment")


def truth_loader(suite: Suite, split: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """A function loading one split's (log-probs, realized ids), hash-checked, that holds only that file's path and
    hash: what ``PredictorContext`` hands a predictor for practice truth, with no reference back to the suite."""
    _check_split(split)
    path, record, name = suite.truth_dir / f"{split}.safetensors", suite.truth_dir / "truth.json", suite.name

    def load() -> tuple[np.ndarray, np.ndarray]:
        from safetensors.numpy import load_file

        if not path.is_file() or not record.is_file():
            raise SuiteError(f"no truth for suite {name!r} ({split}): run `logitpred truth --suite {name}`")
        if sha256_file(path) != json.loads(record.read_text())["sha256"][split]:
            raise SuiteError(f"truth file {path} does not match its recorded hash (corrupted or edited): "
                             f"run `logitpred truth --suite {name} --rebuild`")
        arrays = load_file(path)
        return arrays["logp"], arrays["next_token_id"]

    return load


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SuiteError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def suite_dir(name: str) -> Path:
    return data_dir() / "suites" / name


def load_suite(name_or_path: str | Path) -> Suite:
    """A built suite, by name (under the data dir) or by folder path."""
    path = Path(name_or_path)
    if not (path / "manifest.json").is_file():
        path = suite_dir(str(name_or_path))
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        known = ", ".join(sorted(PRESETS))
        raise SuiteError(
            f"suite {str(name_or_path)!r} is not built: run `logitpred suite build {name_or_path}` (presets: {known})"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise SuiteError(f"{manifest_path}: unsupported suite format {manifest.get('format')!r} (expected {FORMAT})")
    return Suite(path, manifest)


def _cut_prompts(doc_id: str, ids: list[int], tokenizer: Any, rng: random.Random, k: int,
                 min_context: int) -> list[tuple[int, str]]:
    """Up to ``k`` cut points (with the prompt text) where the text re-encodes to exactly ``ids[:cut]``."""
    candidates = list(range(min_context, len(ids)))
    rng.shuffle(candidates)
    cuts: list[tuple[int, str]] = []
    for cut in candidates[: 8 * k]:
        text = tokenizer.decode(ids[:cut], clean_up_tokenization_spaces=False)
        if tokenizer(text, add_special_tokens=False)["input_ids"] == ids[:cut]:
            cuts.append((cut, text))
            if len(cuts) == k:
                break
    return sorted(cuts)


def build_suite(config: SuiteConfig, tokenizer: Any, identity: Any, vocab_size: int, *,
                on_progress: Callable[[int, int], None] | None = None) -> Suite:
    """Cut the prompts of a suite and write its folder (truth is computed separately by ``Suite.compute_truth``)."""
    from .target import bos_ids
    from .tokens import train_tokens, unigram_distribution

    docs = read_corpus(config.corpus)
    _, held = split_documents(docs, seed=config.seed, heldout_fraction=config.heldout_fraction)
    held = [d for d in held if not d.damaged]
    rng = random.Random(f"logitpred-suite:{config.seed}:{config.corpus}")
    rng.shuffle(held)
    if config.max_docs:
        held = held[: config.max_docs]
    need = {"practice": config.practice, "sealed": config.sealed}
    total = sum(need.values())
    per_doc = config.cuts_per_doc or max(1, math.ceil(total / max(1, len(held))))
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    turn = 0
    for doc in held:
        if all(len(rows[s]) >= need[s] for s in SPLITS):
            break
        split = SPLITS[turn % 2] if len(rows[SPLITS[turn % 2]]) < need[SPLITS[turn % 2]] else SPLITS[(turn + 1) % 2]
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"][: config.max_doc_tokens + 1]
        cuts = _cut_prompts(doc.id, ids, tokenizer, rng, min(per_doc, need[split] - len(rows[split])),
                            config.min_context)
        if not cuts:
            continue
        turn += 1
        for cut, text in cuts:
            pid = f"{config.name}-" + hashlib.sha256(f"{doc.id}@{cut}".encode()).hexdigest()[:12]
            rows[split].append({"id": pid, "doc": doc.id, "cut": cut, "text": text, "token_ids": ids[:cut],
                                "next_token_id": ids[cut]})
        if on_progress:
            on_progress(sum(len(r) for r in rows.values()), total)
    for s in SPLITS:
        if len(rows[s]) < need[s]:
            raise SuiteError(
                f"corpus {config.corpus!r} gave only {len(rows[s])} {s} prompts of {need[s]} asked: lower the "
                f"sizes, raise cuts_per_doc or heldout_fraction, or lower min_context ({config.min_context})"
            )

    path = suite_dir(config.name)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for s in SPLITS:
        with open(tmp / f"{s}.jsonl", "w", encoding="utf-8") as f:
            for r in rows[s]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    Vocabulary.from_tokenizer(tokenizer, vocab_size).save(tmp / "vocab.json")
    stream = train_tokens(config.corpus, tokenizer, identity.tokenizer_sha256, seed=config.seed,
                          heldout_fraction=config.heldout_fraction)
    np.save(tmp / "background.npy", unigram_distribution(stream.tokens, vocab_size))
    tokenizer.save_pretrained(tmp / "tokenizer")
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    for s in SPLITS:
        h.update((tmp / f"{s}.jsonl").read_bytes())
    h.update(identity.tokenizer_sha256.encode())
    manifest = {
        "format": FORMAT, "name": config.name, "version": f"1-{h.hexdigest()[:12]}",
        "config": dataclasses.asdict(config), "target": identity.to_dict(), "vocab_size": vocab_size,
        "bos_ids": bos_ids(tokenizer), "sizes": {s: len(rows[s]) for s in SPLITS},
        "documents": {"heldout_used": len({r["doc"] for s in SPLITS for r in rows[s]}),
                      "train_tokens": int(stream.tokens.size), "train_documents": len(stream.doc_ids)},
        "commitment": None,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return load_suite(path)
