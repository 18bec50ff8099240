"""Session fixtures: one tiny real suite (real SmolLM2, real wiki text), built once per test session.

Suites, truth and results go to a temporary data dir; the float32 model conversion is cached in the repo's
``.logitpred/models`` so it happens once per machine, not once per test run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = "LOGITPRED_TEST_POSTGRES_URL"  # set by scripts/postgres.sh, which `make test` runs pytest under
POSTGRES_REQUIRED = "LOGITPRED_TEST_POSTGRES_REQUIRED"  # .ci/run sets it to 1: no server is a failure, never a skip
NO_POSTGRES = (f"no PostgreSQL server: `make test` starts one (or run pytest under `scripts/postgres.sh run "
               f".venv/bin/python -m pytest ...`), which sets {POSTGRES_URL}")


def pytest_collection_modifyitems(config, items):
    """Without a server (and outside CI), mark the PostgreSQL variants skipped up front: pytest -ra then folds them
    into one line per file that says why and how to run them."""
    if os.environ.get(POSTGRES_URL) or os.environ.get(POSTGRES_REQUIRED) == "1":
        return
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("human_db_url") == "postgresql":
            item.add_marker(pytest.mark.skip(reason=NO_POSTGRES))


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


TRAJ_M, TRAJ_K = 4, 2
TRAJ_BEHAVIOURS = '{"id": "then", "text": " and then"}\n{"id": "s", "text": "s of"}\n'


@pytest.fixture(scope="session")
def trajectory_home(target, tmp_path_factory) -> Path:
    """A data home holding the trajectory suite ``traj`` (3 + 3 wiki prompts of the tiny preset, M = 4 continuation
    tokens, K = 2 samples, two behaviours) with its next-token truth and trajectories, built once per session. Tests
    that tamper with it copy it first."""
    import dataclasses

    from tasks import PRESETS, build_suite
    from tasks.trajectory import build_trajectories

    path = tmp_path_factory.mktemp("traj-home")
    (path / "behaviours.jsonl").write_text(TRAJ_BEHAVIOURS)
    config = dataclasses.replace(PRESETS["tiny"], name="traj", practice=3, sealed=3, continuation=TRAJ_M,
                                 samples=TRAJ_K, behaviours=str(path / "behaviours.jsonl"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOGITPRED_HOME", str(path))
        suite = build_suite(config, target.tokenizer, target.identity, target.vocab_size)
        suite.compute_truth(target)
        build_trajectories(suite, target, batch_size=4)
    return path


@pytest.fixture(scope="session")
def tiny_helper(tiny_suite) -> Path:
    """A helper distinct from the target: a 1-layer transformer trained for 3 steps on wiki's train part (seconds)."""
    from predictors.model import trained_helper_dir
    from predictors.train_helper import TrainConfig, train_helper

    dest = trained_helper_dir("tiny")
    train_helper(dest, TrainConfig(corpora=("wiki",), steps=3, batch_size=2, context=32, hidden=32, layers=1, heads=2,
                                   warmup=1, eval_every=3, eval_batches=1))
    return dest


@pytest.fixture(scope="session")
def postgres_server():
    """An SQLAlchemy engine (AUTOCOMMIT) on the test PostgreSQL server named by $LOGITPRED_TEST_POSTGRES_URL.

    `make test` (and so CI) runs pytest under ``scripts/postgres.sh run``, which starts a throwaway server and sets the
    variable. Without it, the PostgreSQL variants skip, saying so, unless $LOGITPRED_TEST_POSTGRES_REQUIRED=1 (CI);
    with it, an unreachable server or a missing driver is a failure."""
    url = os.environ.get(POSTGRES_URL)
    if not url:
        if os.environ.get(POSTGRES_REQUIRED) == "1":
            pytest.fail(f"{NO_POSTGRES}; {POSTGRES_REQUIRED}=1 makes that a failure", pytrace=False)
        pytest.skip(NO_POSTGRES)
    import sqlalchemy as sa

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail(f"{POSTGRES_URL} is set but the driver is missing: pip install -e '.[postgres]'", pytrace=False)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as e:
        pytest.fail(f"{POSTGRES_URL} is set but its server cannot be reached: {e}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def human_db_url(request, tmp_path):
    """A fresh, empty database for one test of the human form, once on each supported database: a new SQLite file,
    and a new database (CREATE DATABASE, dropped after the test) on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'human.sqlite'}"
        return
    import sqlalchemy as sa

    engine = request.getfixturevalue("postgres_server")
    name = f"human_{uuid.uuid4().hex[:16]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield engine.url.set(database=name).render_as_string(hide_password=False)
    with engine.connect() as conn:  # FORCE: also ends what a killed server left connected
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
