"""Session fixtures: one tiny real suite (real SmolLM2, real wiki text), built once per test session.

Suites, truth and results go to a temporary data dir; the float32 model conversion is cached in the repo's
``.logitpred/models`` so it happens once per machine, not once per test run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("logitpred-home")
    os.environ["LOGITPRED_HOME"] = str(home)
    os.environ.setdefault("LOGITPRED_MODEL_CACHE", str(REPO / ".logitpred" / "models"))
    os.environ["LOGITPRED_RESULTS"] = str(home / "results")
    return home


@pytest.fixture(scope="session")
def target(data_home: Path):
    from tasks import load_target

    return load_target()


@pytest.fixture(scope="session")
def tiny_suite(target):
    """The ``tiny`` preset (6 practice + 6 sealed prompts from wiki), with truth."""
    from tasks import PRESETS, build_suite

    suite = build_suite(PRESETS["tiny"], target.tokenizer, target.identity, target.vocab_size)
    suite.compute_truth(target)
    return suite
