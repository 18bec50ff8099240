"""Suites: versioned sets of held-out prompts cut from real text, with the target's truth cached beside them.

A suite folder (``<data_dir>/suites/<name>``) holds ``manifest.json``, ``practice.jsonl``, ``sealed.jsonl`` (the
prompts), ``vocab.json``, ``background.npy`` (the train-part unigram) and ``tokenizer/``. It is a symbolic link to a
build folder ``<data_dir>/suite-builds/<name>/<build>/``: a build is written in full, synced, and only then published
by replacing the link in one ``rename``, so a kill at any moment leaves the old suite or the new one. Truth lives apart,
under ``<data_dir>/truth/<name>/<version>-<target id>/`` (see ``tasks.truth``: array files named by content hash and
``truth.json``, written last, which holds the sealed commitment).

Prompts (``tasks.cuts``): whole held-out source documents go to one split; each passage is divided into
non-overlapping windows with at most one cut each, so no prompt shows another prompt's realized continuation.

Trajectory suites (``continuation = M > 0``): each prompt row also carries its realized continuation (the document's
next ``M`` tokens); the manifest gains a ``trajectory`` section (``tasks.trajectory.spec``) and a behaviour file, if
any, is kept in the folder as ``behaviours.jsonl`` (its sha256 is part of the version, its path is not). Continuation
sets and their truth are built with the target (``tasks.trajectory``). A next-token suite's version is computed as
before trajectory suites existed (the new config fields at their defaults are left out of it).

The sealed commitment (``tasks.truth.commitment_of``) binds the sealed prompts, the target's identity, its dtype and the
stored sealed truth: publish it at build time, check it before scoring, and reproduce it on other hardware with
``Suite.verify_recomputed`` (``logitpred truth --verify --recompute``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .io import crash_point, fsync_tree, loads_json, open_text, publish_link, read_json
from .paths import data_dir, sha256_file
from .suite_truth import SuiteTruth
from .truth import SPLITS, SuiteError, load_split, read_record
from .vocab import Vocabulary

FORMAT = "logitpred-suite/2"


@dataclass(frozen=True)
class SuiteConfig:
    """How a suite is cut. Sizes are validated on creation (``SuiteError`` naming the field and its CLI option)."""

    name: str
    corpus: str
    seed: int = 0
    heldout_fraction: float = 0.1
    practice: int = 200
    sealed: int = 200
    min_context: int = 16
    max_doc_tokens: int = 512  # windows hold at most max_doc_tokens + max(continuation, 1) tokens (prompt and
    # realized token or continuation)
    cuts_per_doc: int | None = None  # windows (one cut each) per passage; None: the fewest that reach the sizes
    max_docs: int | None = None  # consider only this many held-out source documents (tiny suites)
    continuation: int = 0  # M: tokens of each prompt's continuations (0: a next-token suite)
    samples: int = 0  # K: continuations sampled from the target per prompt (needs continuation > 0)
    behaviours: str | None = None  # JSONL of {"id", "text"}: given continuations (needs continuation > 0)

    def __post_init__(self) -> None:
        def bad(what: str, option: str = "") -> SuiteError:
            return SuiteError(f"suite {self.name!r}: {what}" + (f" (option {option})" if option else ""))

        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise bad("name must be a plain folder name (no '/', not starting with '.')")
        if not self.corpus:
            raise bad("corpus is empty: give wiki, news, sotu, a .jsonl file or a .txt folder", "--corpus")
        for f, option in (("practice", "--practice"), ("sealed", "--sealed"), ("min_context", "--min-context")):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise bad(f"{f} must be a whole number >= 1, got {getattr(self, f)!r}", option)
        if not isinstance(self.heldout_fraction, int | float) or not 0 < self.heldout_fraction < 1:
            raise bad(f"heldout_fraction must be between 0 and 1 (exclusive), got {self.heldout_fraction!r}",
                      "--heldout-fraction")
        if not isinstance(self.max_doc_tokens, int) or self.max_doc_tokens <= self.min_context:
            raise bad(f"max_doc_tokens ({self.max_doc_tokens!r}) must exceed min_context ({self.min_context})")
        for f in ("cuts_per_doc", "max_docs"):
            if getattr(self, f) is not None and (not isinstance(getattr(self, f), int) or getattr(self, f) < 1):
                raise bad(f"{f} must be None or a whole number >= 1, got {getattr(self, f)!r}")
        for f, option in (("continuation", "--continuation"), ("samples", "--samples")):
            if not isinstance(getattr(self, f), int) or isinstance(getattr(self, f), bool) or getattr(self, f) < 0:
                raise bad(f"{f} must be a whole number >= 0, got {getattr(self, f)!r}", option)
        if self.behaviours is not None and (not isinstance(self.behaviours, str) or not self.behaviours):
            raise bad(f"behaviours must be None or a file path, got {self.behaviours!r}", "--behaviours")
        if not self.continuation and (self.samples or self.behaviours):
            raise bad("samples and behaviours need continuations: give continuation M > 0", "--continuation")


TRAJECTORY_FIELDS = ("continuation", "samples", "behaviours")


def version_config(config: SuiteConfig, behaviours_sha256: str | None = None) -> dict[str, Any]:
    """The config as the suite version hashes it: ``dataclasses.asdict(config)`` without the trajectory fields for a
    next-token suite (so its version is what it was before they existed), and with the behaviour file's sha256 in
    place of its path for a trajectory suite (the same file gives the same suite wherever it lies)."""
    d = dataclasses.asdict(config)
    if not config.continuation:
        for f in TRAJECTORY_FIELDS:
            d.pop(f)
    elif config.behaviours:
        d["behaviours"] = f"sha256:{behaviours_sha256}"
    return d


PRESETS: dict[str, SuiteConfig] = {
    "wiki": SuiteConfig("wiki", "wiki"),
    "news": SuiteConfig("news", "news"),
    "sotu": SuiteConfig("sotu", "sotu"),
    "tiny": SuiteConfig("tiny", "wiki", practice=6, sealed=6, max_doc_tokens=96, max_docs=40),
}


def build_command(config: dict[str, Any]) -> str:
    """The ``logitpred suite build`` command that rebuilds a suite of this config (a manifest's ``config``)."""
    name = config.get("name", "?")
    base = dataclasses.asdict(PRESETS[name]) if name in PRESETS else {"corpus": None, **{
        f.name: f.default for f in dataclasses.fields(SuiteConfig) if f.default is not dataclasses.MISSING}}
    options = {"corpus": "--corpus", "practice": "--practice", "sealed": "--sealed", "seed": "--seed",
               "heldout_fraction": "--heldout-fraction", "min_context": "--min-context",
               "continuation": "--continuation", "samples": "--samples", "behaviours": "--behaviours"}
    args = [f"{flag} {config[k]}" for k, flag in options.items() if k in config and config[k] != base.get(k)]
    return " ".join(["logitpred suite build", name, *args, "--rebuild"])


@dataclass(frozen=True)
class Prompt:
    id: str
    doc: str  # truth group key: ``<passage>@<start>``, one per window
    text: str
    token_ids: tuple[int, ...]
    next_token_id: int  # the token that really followed in the source document
    source: str = ""  # source document (split unit); start and cut are token offsets in its coordinates
    start: int = 0
    cut: int = 0
    continuation_ids: tuple[int, ...] = ()  # trajectory suites: the document's next M tokens (realized continuation)
    continuation_text: str | None = None  # their text (after the prompt's text it encodes to prompt + continuation)


@dataclass
class Suite(SuiteTruth):
    """A built suite: its folder, manifest and prompts; its truth through ``SuiteTruth`` (``tasks.suite_truth``)."""

    path: Path
    manifest: dict[str, Any]
    _truth: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _prompts: dict[str, list[Prompt]] = field(default_factory=dict, repr=False)
    _record: dict[str, Any] | None = field(default=None, repr=False)

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

    @cached_property
    def sealed_prompts_sha256(self) -> str:
        """sha256 of ``sealed.jsonl``: identifies the sealed prompts whatever truth is computed for them."""
        return sha256_file(self.path / "sealed.jsonl")

    def prompts(self, split: str) -> list[Prompt]:
        """The prompts of ``split`` (``practice`` or ``sealed``), in file order."""
        _check_split(split)
        if split not in self._prompts:
            self._prompts[split] = [_prompt(o) for o in _read_jsonl(self.path / f"{split}.jsonl")]
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


def truth_loader(suite: Suite, split: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """A function loading one split's (log-probs, realized ids), hash-checked, that holds only the truth folder, the
    suite's identity and the split's prompt ids: what ``PredictorContext`` hands a predictor for practice truth, with
    no reference back to the suite. The record is read at call time."""
    _check_split(split)
    folder, name, version, target_id = suite.truth_dir, suite.name, suite.version, suite.target["id"]
    ids = [p.id for p in suite.prompts(split)]

    def load() -> tuple[np.ndarray, np.ndarray]:
        record = read_record(folder, name=name, version=version, target_id=target_id)
        if record is None:
            raise SuiteError(f"no truth for suite {name!r} ({split}): run `logitpred truth --suite {name}`")
        return load_split(folder, record, split, ids, name)

    return load


def _prompt(o: dict[str, Any]) -> Prompt:
    """A ``Prompt`` from a prompt row (a line of ``<split>.jsonl``, or ``tasks.cuts.prompt_rows``)."""
    return Prompt(o["id"], o["doc"], o["text"], tuple(o["token_ids"]), o["next_token_id"], o["source"], o["start"],
                  o["cut"], tuple(o.get("continuation_ids") or ()), o.get("continuation_text"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SuiteError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open_text(path) as f:
        for line in f:
            if line.strip():
                yield loads_json(line)


def suite_dir(name: str) -> Path:
    """Where suite ``name`` is published: ``<data_dir>/suites/<name>`` (a link to its current build)."""
    return data_dir() / "suites" / name


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the file system refuses the path itself (a name too long: OSError)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def load_suite(name_or_path: str | Path) -> Suite:
    """A built suite, by name (under the data dir) or by folder path. Raises ``SuiteError`` if it is not built, or
    was built by an older format (with the command that rebuilds it)."""
    path = Path(name_or_path)
    if not _is_file(path / "manifest.json"):
        path = suite_dir(str(name_or_path))
    manifest_path = path / "manifest.json"
    if not _is_file(manifest_path):
        known = ", ".join(sorted(PRESETS))
        raise SuiteError(
            f"suite {str(name_or_path)!r} is not built: run `logitpred suite build {name_or_path}` (presets: {known})"
        )
    try:
        manifest = read_json(manifest_path)
    except ValueError as e:
        raise SuiteError(f"{manifest_path} is unreadable ({e}): rebuild the suite with `logitpred suite build "
                         f"{path.name} --rebuild`") from e
    if manifest.get("format") != FORMAT:
        raise SuiteError(f"{manifest_path}: suite format {manifest.get('format')!r}, not {FORMAT} (older suites could "
                         f"show one prompt's hidden continuation in another): rebuild with "
                         f"`{build_command(manifest.get('config') or {'name': path.name})}`")
    return Suite(path, manifest)


def build_suite(config: SuiteConfig, tokenizer: Any, identity: Any, vocab_size: int, *,
                on_progress: Callable[[int, int], None] | None = None, context: int | None = None) -> Suite:
    """Cut the prompts of a suite and publish its folder (truth is computed separately by ``Suite.compute_truth``).

    ``context`` (default: ``identity.context``, from the target's config) is the most positions a model input may hold:
    prompts are cut so that BOS plus prompt fit it (``max_doc_tokens`` clamped). The build is written to a fresh
    folder, synced, then published by an atomic link switch; the previous build of the same name is deleted after the
    switch. With ``config.continuation = M > 0`` prompts leave room for ``M`` continuation tokens in the context, rows
    carry their realized continuation, and the behaviour file (if any) is checked against every prompt
    (``tasks.trajectory.spec.manifest_section``). Raises ``SuiteError`` when the corpus cannot give the sizes asked, the
    context leaves no room after ``min_context`` (and ``M``), the behaviour file is bad or one of its behaviours fits
    no prompt, or (never expected) a prompt leaks, exceeds the context or holds a control token.
    """
    from .cuts import control_tokens, leaks, prompt_rows, too_long
    from .target import bos_ids

    if config.behaviours:
        from .trajectory.behaviours import read_behaviours

        read_behaviours(config.behaviours)  # a bad file fails before the prompts are cut
    context = context or getattr(identity, "context", None)
    n_bos = len(bos_ids(tokenizer))
    rows = prompt_rows(config, tokenizer, on_progress=on_progress, context=context, n_bos=n_bos)
    problems = leaks(rows) + too_long(rows, context, n_bos) + control_tokens(rows, tokenizer)
    if problems:  # prompt_rows guarantees none; never publish a suite that breaks the invariants
        raise SuiteError(f"internal error, suite {config.name!r} not written: {len(problems)} problem(s), first: "
                         f"{problems[0]}")
    section, behaviours = None, None
    if config.continuation:
        from .trajectory.spec import manifest_section

        section, behaviours = manifest_section(config, {s: [_prompt(r) for r in rows[s]] for s in SPLITS}, tokenizer)
    publish_build(config.name, lambda build: _write_build(build, config, rows, tokenizer, identity, vocab_size,
                                                          context, section, behaviours))
    return load_suite(config.name)


def publish_build(name: str, write: Callable[[Path], None]) -> None:
    """Write a build of suite ``name`` with ``write(folder)`` into a fresh folder under the data dir's suite-builds,
    then publish it atomically as the suite (``publish_link``) and delete earlier builds, under the name's lock (one
    build of a name at a time: each deletes the others' folders). A crash before the link leaves the previous suite
    as it was. Shared by ``build_suite`` and found suites (``tasks.found``)."""
    builds = data_dir() / "suite-builds" / name
    builds.mkdir(parents=True, exist_ok=True)
    with open(builds.parent / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = builds / uuid.uuid4().hex[:12]
        write(build)
        crash_point("suite:before-link")
        publish_link(suite_dir(name), build)
        crash_point("suite:after-link")
        for old in builds.iterdir():  # earlier builds, and builds of killed processes that were never published
            if old == build:
                continue
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def _write_build(build: Path, config: SuiteConfig, rows: dict[str, list[dict[str, Any]]], tokenizer: Any,
                 identity: Any, vocab_size: int, context: int | None, section: dict[str, Any] | None = None,
                 behaviours: bytes | None = None) -> None:
    """Write a complete suite folder at ``build`` (not yet published) and sync it to disk; ``section`` is a trajectory
    suite's manifest section, ``behaviours`` its behaviour file's bytes (kept as ``behaviours.jsonl``)."""
    from .target import bos_ids
    from .tokens import train_tokens, unigram_distribution

    build.mkdir(parents=True)
    for s in SPLITS:
        with open(build / f"{s}.jsonl", "w", encoding="utf-8") as f:
            for r in rows[s]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    Vocabulary.from_tokenizer(tokenizer, vocab_size).save(build / "vocab.json")
    stream = train_tokens(config.corpus, tokenizer, identity.tokenizer_sha256, seed=config.seed,
                          heldout_fraction=config.heldout_fraction)
    np.save(build / "background.npy", unigram_distribution(stream.tokens, vocab_size))
    tokenizer.save_pretrained(build / "tokenizer")
    if behaviours is not None:
        (build / "behaviours.jsonl").write_bytes(behaviours)
    beh_sha = section["behaviours"]["sha256"] if section and section["behaviours"] else None
    h = hashlib.sha256(json.dumps(version_config(config, beh_sha), sort_keys=True).encode())
    for s in SPLITS:
        h.update((build / f"{s}.jsonl").read_bytes())
    h.update(identity.tokenizer_sha256.encode())
    manifest = {
        "format": FORMAT, "name": config.name, "version": f"2-{h.hexdigest()[:12]}",
        "config": dataclasses.asdict(config), "target": identity.to_dict(), "vocab_size": vocab_size,
        "bos_ids": bos_ids(tokenizer), "context": context, "sizes": {s: len(rows[s]) for s in SPLITS},
        "documents": {"heldout_sources": len({r["source"] for s in SPLITS for r in rows[s]}),
                      "heldout_passages": len({r["passage"] for s in SPLITS for r in rows[s]}),
                      "windows": len({r["doc"] for s in SPLITS for r in rows[s]}),
                      "train_tokens": int(stream.tokens.size), "train_documents": len(stream.doc_ids)},
        "sealed_prompts_sha256": sha256_file(build / "sealed.jsonl"),
    }
    if section is not None:
        manifest["trajectory"] = section
    (build / "manifest.json").write_text(json.dumps(manifest, indent=2))
    fsync_tree(build)

