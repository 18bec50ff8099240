"""Index lifecycle for corpus-statistics predictors: which training text, where the index lives, when it is rebuilt.

An index (n-gram tables, a suffix array) is built from the *train* parts of one or more corpora, tokenized by the
target's tokenizer (``tasks.tokens.train_tokens``: the held-out documents that prompts are cut from never enter it).
It is saved as ``<data_dir>/indexes/<kind>-<key>/`` holding ``manifest.json`` and one ``.npy`` file per array. The key
hashes everything the index depends on: the format version, the kind and its parameters (e.g. the n-gram order), the
vocabulary size, and the sha256 of each corpus's train token stream (which in turn depends on the corpus text, the split
seed, the held-out fraction and the tokenizer). So a change to any of them lands on a new key and is built afresh; an
index at an existing key is reused only after its manifest matches and every array file matches its recorded sha256.
A corrupted or stale folder is never used silently: ``IndexFileError`` names the folder, what is wrong, and the rebuild
command.

Writes are atomic: a build goes to a hidden temporary folder (arrays, then the manifest naming their sha256), is
fsynced, and renamed into place, so a kill never leaves a half-written index at a key (see ``_publish``).

Left out: locking between two processes building the same index at once (the first rename wins, both folders are
identical), and garbage collection of indexes no longer used (delete ``<data_dir>/indexes/`` freely).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.corpora import BUILTIN, CorpusError
from tasks.io import aside_dir, crash_point, fsync_dir, fsync_tree, read_json, replace_dir
from tasks.paths import data_dir, sha256_file

FORMAT = "logitpred-index/1"
Step = Callable[[str], None]  # advances a build's progress bar by one stage, naming the next one


class IndexFileError(ValueError):
    """An index on disk is corrupted or stale, or the training text behind it is unusable."""


@dataclass(frozen=True)
class TrainingText:
    """The concatenated train token streams of the chosen corpora (documents never span two corpora)."""

    corpora: list[dict[str, Any]]  # per corpus: name, tokens, documents, sha256 of its token stream
    tokens: np.ndarray  # int64, all train documents of all corpora concatenated
    offsets: np.ndarray  # int64, document k is tokens[offsets[k]:offsets[k+1]]
    seed: int
    heldout_fraction: float

    @property
    def documents(self) -> int:
        return int(self.offsets.size - 1)

    def text_bytes(self) -> int:
        """UTF-8 size of the train text behind the tokens (re-reads the corpora: for throughput figures only)."""
        from tasks.corpora import read_corpus, split_documents

        total = 0
        for c in self.corpora:
            train, _ = split_documents(read_corpus(c["name"]), seed=self.seed, heldout_fraction=self.heldout_fraction)
            total += sum(len(d.text.encode()) for d in train)
        return total


class _LazyTokenizer:
    """Loads the target's tokenizer only if ``train_tokens`` misses its cache (loading costs seconds)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.tok = ctx, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.tok is None:
            self.tok = self.ctx.tokenizer()
        return self.tok(*args, **kwargs)


def resolve_corpora(spec: str | list[str] | None, suite_corpus: str) -> list[str]:
    """The corpora an index trains on: ``"all"`` (default) = the built-in ones plus the suite's own corpus,
    ``"suite"`` = the suite's corpus only, or an explicit list / comma-separated string of corpus specs."""
    if spec is None or spec == "all":
        names = [*BUILTIN, suite_corpus]
    elif spec == "suite":
        names = [suite_corpus]
    else:
        names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        if not names:
            raise IndexFileError("option corpora is empty: give 'all', 'suite' or corpus names like 'wiki,news'")
    return list(dict.fromkeys(names))  # dedupe, keep order


def training_text(corpora: list[str], ctx: Any, *, vocab_size: int) -> TrainingText:
    """Train parts of ``corpora`` on the target's tokenizer with the suite's split (``ctx``: a PredictorContext)."""
    from tasks.tokens import train_tokens

    tokenizer = _LazyTokenizer(ctx)
    parts, meta = [], []
    for name in corpora:
        try:
            stream = train_tokens(name, tokenizer, ctx.tokenizer_sha256, seed=ctx.seed,
                                  heldout_fraction=ctx.heldout_fraction)
        except CorpusError as e:
            raise IndexFileError(f"cannot train on corpus {name!r}: {e}. Choose other corpora with the option "
                                 "corpora=... (e.g. -O corpora=wiki,news)") from e
        if stream.tokens.size == 0:
            raise IndexFileError(f"corpus {name!r} has no text in its train part ({len(stream.doc_ids)} train "
                                 "documents, none with tokens): add text or choose other corpora with -O corpora=...")
        if int(stream.tokens.max()) >= vocab_size:
            raise IndexFileError(f"corpus {name!r} has token id {int(stream.tokens.max())} >= vocabulary size "
                                 f"{vocab_size}: its token cache belongs to another tokenizer; delete "
                                 f"{data_dir() / 'tokens'} and retry")
        sha = hashlib.sha256(np.ascontiguousarray(stream.tokens, dtype=np.uint32).tobytes())
        sha.update(np.ascontiguousarray(stream.offsets, dtype=np.int64).tobytes())
        meta.append({"name": name, "tokens": int(stream.tokens.size), "documents": len(stream.doc_ids),
                     "sha256": sha.hexdigest()})
        parts.append(stream)
    tokens = np.concatenate([p.tokens.astype(np.int64) for p in parts])
    lengths = np.concatenate([np.diff(p.offsets) for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TrainingText(meta, tokens, offsets, ctx.seed, ctx.heldout_fraction)


def index_key(kind: str, params: dict[str, Any], text: TrainingText) -> str:
    blob = json.dumps({"format": FORMAT, "kind": kind, "params": params,
                       "corpora": [(c["name"], c["sha256"]) for c in text.corpora]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def index_dir(kind: str, key: str) -> Path:
    return data_dir() / "indexes" / f"{kind}-{key}"


def load_or_build(kind: str, params: dict[str, Any], text: TrainingText, build: Callable[[TrainingText, Step],
                  dict[str, np.ndarray]], *, stages: int, rebuild_hint: str, provenance: dict[str, Any],
                  rebuild: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of the index for (kind, params, text): loaded when valid, built (with a progress bar) when absent.

    ``build(text, step)`` returns the arrays and calls ``step`` ``stages`` times. ``rebuild=True`` rebuilds even a
    valid index; otherwise a corrupted or stale one raises ``IndexFileError`` whose message ends with ``rebuild_hint``.
    """
    folder = index_dir(kind, index_key(kind, params, text))
    if folder.exists() and not rebuild:
        return _load(folder, kind, params, text, rebuild_hint)
    t0 = time.perf_counter()
    with progress_bar(f"building {kind} index ({sum(c['tokens'] for c in text.corpora):,} tokens)", stages) as step:
        arrays = build(text, step)
    seconds = time.perf_counter() - t0
    manifest = {"format": FORMAT, "kind": kind, "params": params, "corpora": text.corpora, **provenance,
                "build_seconds": round(seconds, 3),
                "built": datetime.now(UTC).isoformat(), "versions": _versions(), "files": {}}
    _publish(folder, arrays, manifest)
    return _load(folder, kind, params, text, rebuild_hint)


def _publish(folder: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Write the index to a fresh hidden folder (arrays, then the manifest naming their sha256), sync it, and rename
    it to ``folder`` in one step. A kill before the rename leaves no trace at ``folder``; a rebuild over an existing
    index swaps the folders with ``tasks.io.replace_dir`` (atomic on Linux; elsewhere a kill between its two renames
    leaves no index, which the next use simply builds again: an index is a cache whose key fixes its content)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for old in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by killed builds of this key an hour ago or more
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    tmp = aside_dir(folder)
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
            manifest["files"][name] = sha256_file(tmp / f"{name}.npy")
        crash_point("index:before-manifest")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        fsync_tree(tmp)
        crash_point("index:before-rename")
        if folder.exists():
            replace_dir(tmp, folder)  # a rebuild: one atomic exchange where the kernel allows it
        else:
            try:
                os.rename(tmp, folder)
            except OSError:  # another process published the same key meanwhile: same content, keep theirs
                if not (folder / "manifest.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(folder: Path, kind: str, params: dict[str, Any], text: TrainingText,
          hint: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = folder / "manifest.json"
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as e:
        raise IndexFileError(f"index {folder} has no readable manifest ({e}): it is corrupted or was interrupted "
                             f"while being written. {hint}") from e
    expected = {"format": FORMAT, "kind": kind, "params": params,
                "corpora": [(c["name"], c["sha256"]) for c in text.corpora]}
    found = {"format": manifest.get("format"), "kind": manifest.get("kind"), "params": manifest.get("params"),
             "corpora": [(c.get("name"), c.get("sha256")) for c in manifest.get("corpora", [])]}
    for field_name in expected:
        if expected[field_name] != found[field_name]:
            raise IndexFileError(f"index {folder} is stale: its manifest says {field_name} = "
                                 f"{found[field_name]!r}, expected {expected[field_name]!r}. {hint}")
    arrays = {}
    for name, digest in manifest.get("files", {}).items():
        file = folder / f"{name}.npy"
        if not file.is_file() or sha256_file(file) != digest:
            raise IndexFileError(f"index {folder}: array file {file.name} is missing or does not match its recorded "
                                 f"sha256 (corrupted or edited). {hint}")
        try:
            arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise IndexFileError(f"index {folder}: {file.name} is not a readable array ({e}). {hint}") from e
    return arrays, {**manifest, "index": folder.name}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("numpy", "pydivsufsort"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@contextmanager
def progress_bar(title: str, total: int) -> Iterator[Step]:
    """A rich progress bar on stderr advanced one stage per ``step(name)`` call; silent if another bar is live."""
    from rich.console import Console
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=False)
    try:
        bar.start()
    except LiveError:  # already inside someone else's live display: build without a bar of our own
        yield lambda name: None
        return
    task = bar.add_task(title, total=total)
    try:
        yield lambda name: bar.update(task, advance=1, description=f"{title}: {name}")
    finally:
        bar.stop()
