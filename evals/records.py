"""Run records: every scoring writes ``results/<run-id>/`` with per-prompt metrics and a summary that says exactly
what was scored (suite version and commitment, target identity, predictor and its parameters, predictions file hash,
package versions, seeds, command line), so any number in a leaderboard can be traced and recomputed.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

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
    root = root or results_dir()
    run_dir = root / summary["run_id"]
    run_dir.mkdir(parents=True, exist_ok=False)
    per_prompt.to_csv(run_dir / "per_prompt.csv", index=False)
    (run_dir / "summary.json").write_text(json.dumps({"format": RECORD_FORMAT, **summary}, indent=2))
    return run_dir


def read_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """All run summaries under ``root`` (default ``results/``), oldest first."""
    root = root or results_dir()
    runs = []
    for path in sorted(root.glob("*/summary.json")):
        obj = json.loads(path.read_text())
        if obj.get("format") == RECORD_FORMAT:
            obj["_dir"] = str(path.parent)
            runs.append(obj)
    return sorted(runs, key=lambda r: r["created"])


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
