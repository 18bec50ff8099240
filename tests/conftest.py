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


@pytest.fixture(scope="session")
def tiny_helper(tiny_suite) -> Path:
    """A helper distinct from the target: a 1-layer transformer trained for 3 steps on wiki's train part (seconds)."""
    from predictors.model import trained_helper_dir
    from predictors.train_helper import TrainConfig, train_helper

    dest = trained_helper_dir("tiny")
    train_helper(dest, TrainConfig(corpora=("wiki",), steps=3, batch_size=2, context=32, hidden=32, layers=1, heads=2,
                                   warmup=1, eval_every=3, eval_batches=1))
    return dest
