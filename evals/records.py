"""Run records: every scoring writes ``results/<run-id>/`` with per-prompt metrics and a summary that says exactly
what was scored (suite version and commitment, target identity, predictor and its parameters, predictions file hash,
package versions, seeds, command line), so any number in a leaderboard can be traced and recomputed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.io import aside_dir, crash_point, fsync_dir, fsync_tree, read_json
from tasks.paths import results_dir

PACKAGES = ("logitpred", "numpy", "scipy", "pandas", "torch", "transformers", "tokenizers", "inspect_ai")
RECORD_FORMAT = "logitpred-run/1"


def environment() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    out.update(source_revision())
    return out


def source_revision() -> dict[str, str]:
    """The harness's git commit and whether the checkout had uncommitted changes (empty outside a git checkout):
    the package version alone does not say which code produced a number."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": head, "git_dirty": "yes" if dirty else "no"}


def new_run_id(suite: str, split: str, predictor: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{suite}-{split}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', predictor)}"


def write_run(summary: dict[str, Any], per_prompt: pd.DataFrame, *, root: Path | None = None) -> Path:
    """Write ``<root>/<run_id>/`` (``per_prompt.csv``, ``summary.json``) all at once; return the folder.

    The files go to a hidden temporary folder beside it, are fsynced, and the folder is renamed into place, so a kill
    leaves the whole record or none (readers skip hidden folders). Raises ``FileExistsError`` if the run id exists.
    """
    root = root or results_dir()
    run_dir = root / summary["run_id"]
    root.mkdir(parents=True, exist_ok=True)
    if run_dir.exists():
        raise FileExistsError(f"run record {run_dir} already exists")
    tmp = aside_dir(run_dir)
    try:
        per_prompt.to_csv(tmp / "per_prompt.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps({"format": RECORD_FORMAT, **summary}, indent=2))
        fsync_tree(tmp)
        crash_point("run:before-rename")
        os.rename(tmp, run_dir)  # fails if run_dir appeared meanwhile: never merges two records
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    return run_dir


def read_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """All run summaries under ``root`` (default ``results/``), oldest first; hidden (temporary) folders skipped."""
    root = root or results_dir()
    runs = []
    for path in sorted(root.glob("*/summary.json")):
        if path.parent.name.startswith("."):
            continue
        obj = read_json(path)
        if obj.get("format") == RECORD_FORMAT:
            obj["_dir"] = str(path.parent)
            runs.append(obj)
    return sorted(runs, key=lambda r: r["created"])


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
