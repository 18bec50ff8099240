"""Reading and writing the harness's files: strict JSON/YAML at the boundary, BOM-tolerant text, atomic writes.

Every JSON or YAML file the harness reads from a user (predictions, corpora, configs, request bodies, behaviour files)
goes through ``loads_json`` / ``load_yaml``, which reject duplicate keys: ``{"top": {" the": 0.7, " the": 0.2}}``
would otherwise keep the last value silently (Python's ``json`` and PyYAML both do). Text files are decoded as UTF-8
with an optional byte-order mark (``utf-8-sig``), as editors on Windows save them.

Every file of state the harness writes (truth, manifests, indexes, approvals, ledgers, answers) goes through
``atomic_write_bytes`` and friends: write to a temporary file in the same folder, ``fsync`` it, ``os.replace`` it over
the destination and ``fsync`` the folder (POSIX ``rename(2)`` is atomic within one file system), so a kill at any point
leaves the old content or the new one, never a mixture. ``crash_point(name)`` lets the tests kill a real process
(SIGKILL, as ``kill -9``) at named points between such steps, when ``$LOGITPRED_KILL_AT`` names that point.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

ENCODING = "utf-8-sig"  # reads plain UTF-8 too; a leading BOM is dropped
BOM = "\ufeff"


class DuplicateKeyError(ValueError):
    """A JSON object or YAML mapping names the same key twice."""


# --- strict JSON ------------------------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKeyError(f"duplicate key {key!r} in a JSON object: give each key once")
        obj[key] = value
    return obj


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that rejects duplicate object keys (``DuplicateKeyError``, a ``ValueError``) and a leading BOM.

    Raises ``json.JSONDecodeError`` for malformed JSON, ``DuplicateKeyError`` naming the repeated key.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text.removeprefix(BOM), object_pairs_hook=_no_duplicates)


def read_json(path: Path) -> Any:
    """A JSON file, strict (see ``loads_json``), BOM-tolerant."""
    return loads_json(Path(path).read_text(encoding=ENCODING))


def read_text(path: Path) -> str:
    """A UTF-8 text file, with a leading byte-order mark dropped."""
    return Path(path).read_text(encoding=ENCODING)


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """Open a UTF-8 text file (``.gz`` too) for reading, dropping a leading byte-order mark."""
    import gzip

    path = Path(path)
    f = gzip.open(path, "rt", encoding=ENCODING) if path.suffix == ".gz" else open(path, encoding=ENCODING)
    try:
        yield f
    finally:
        f.close()


# --- strict YAML ------------------------------------------------------------------------------------------------------
def load_yaml(text: str, *, source: str = "YAML") -> Any:
    """``yaml.safe_load`` that rejects a mapping with a repeated key, naming the key and its line.

    Raises ``DuplicateKeyError`` (a ``ValueError``) or ``yaml.YAMLError`` for malformed YAML.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(f"{source}: duplicate key {key!r} at line {key_node.start_mark.line + 1}: "
                                        "give each key once")
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(text.removeprefix(BOM), Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: Path) -> Any:
    """A YAML file, strict (see ``load_yaml``), BOM-tolerant."""
    return load_yaml(read_text(path), source=str(path))


# --- atomic writes ----------------------------------------------------------------------------------------------------
def crash_point(name: str) -> None:
    """Kill this process with SIGKILL here if ``$LOGITPRED_KILL_AT`` is ``name`` (tests of atomicity; no-op otherwise)."""
    if os.environ.get("LOGITPRED_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """``fsync`` a folder so a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file, all at once.

    The data goes to a temporary file beside ``path``, is fsynced, then renamed over ``path`` (atomic on POSIX); the
    folder is fsynced. A failure or kill before the rename leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically (see ``atomic_write``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (see ``atomic_write``)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Replace ``path`` with ``array`` in ``.npy`` format atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: np.save(f, array))


def aside_dir(dest: Path, name: str | None = None) -> Path:
    """A fresh, empty folder beside ``dest`` (same file system, so it can be renamed or swapped onto ``dest``), named
    ``.<name>.<random>.tmp``, readable like a folder made by ``mkdir`` (``mkdtemp`` alone makes it private)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name or dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp.chmod(0o755)
    return tmp


def replace_dir(src: Path, dest: Path) -> None:
    """Put the complete folder ``src`` at ``dest``, replacing any folder there, so that ``dest`` is always whole.

    Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two folders in one atomic step (the old one, now at ``src``, is then
    removed); where the kernel or file system lacks it, ``dest`` is renamed aside first, which leaves a moment without
    ``dest`` (never a mixture of old and new files). ``src`` and ``dest`` must be on one file system.
    """
    import ctypes
    import shutil

    src, dest = Path(src), Path(dest)
    if not dest.exists():
        os.replace(src, dest)
        fsync_dir(dest.parent)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    swap = getattr(libc, "renameat2", None)
    at_fdcwd, rename_exchange = -100, 2
    if swap is not None and swap(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dest), rename_exchange) == 0:
        fsync_dir(dest.parent)
        shutil.rmtree(src, ignore_errors=True)
        return
    aside = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, aside)
    crash_point(f"replace-dir-aside:{dest.name}")
    os.replace(src, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(aside, ignore_errors=True)


def fsync_tree(path: Path) -> None:
    """``fsync`` every file and folder under ``path`` (and ``path`` itself): call before publishing a folder that was
    written in place (e.g. by a library's ``save_pretrained``) with one atomic rename or link switch."""
    path = Path(path)
    for p in sorted(path.rglob("*"), reverse=True):
        if p.is_symlink():
            continue
        if p.is_dir():
            fsync_dir(p)
        else:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def publish_link(link: Path, target: Path) -> None:
    """Point the symbolic link ``link`` at the folder ``target`` in one ``rename(2)``: readers see the old target or
    the new one, never none. The link is relative (the data dir can move). A real folder at ``link`` (a layout from
    before links) is swapped for the link by ``replace_dir`` and then removed."""
    import uuid

    link, target = Path(link), Path(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".link-{uuid.uuid4().hex[:12]}"
    os.symlink(os.path.relpath(target, link.parent), tmp)
    if link.is_dir() and not link.is_symlink():
        replace_dir(tmp, link)
        return
    os.replace(tmp, link)
    fsync_dir(link.parent)
