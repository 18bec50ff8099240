"""Fixtures shared by the predictor tests."""

import pytest


@pytest.fixture
def registry(data_home):
    """An empty approval registry for the test, removed afterwards."""
    from predictors.approval import registry_path

    path = registry_path()
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)
