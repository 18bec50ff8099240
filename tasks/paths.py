"""Where logitpred keeps what it builds.

Everything generated is rebuildable and lives outside version control:
- ``data_dir()``: suites, truth caches, token caches and predictor indexes (``$LOGITPRED_HOME``, default ``./.logitpred``);
- ``model_cache_dir()``: float32 copies of target models converted from GGUF (``$LOGITPRED_MODEL_CACHE``,
  default ``<data_dir>/models``), kept apart so tests can use a fresh data dir without re-converting models;
- ``results_dir()``: run records, leaderboards and reports (``$LOGITPRED_RESULTS``, default ``./results``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def data_dir() -> Path:
    return Path(os.environ.get("LOGITPRED_HOME", ".logitpred")).resolve()


def model_cache_dir() -> Path:
    env = os.environ.get("LOGITPRED_MODEL_CACHE")
    return Path(env).resolve() if env else data_dir() / "models"


def results_dir() -> Path:
    return Path(os.environ.get("LOGITPRED_RESULTS", "results")).resolve()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large weight files do not load into memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One hash over several files (name and content of each, in sorted name order)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()
