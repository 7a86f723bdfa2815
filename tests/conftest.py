"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from model_factory import build_models_dir

# These machines have 2 noisy cores: time limits would fail tests for load, not for bugs.
settings.register_profile("inferfleet", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("inferfleet")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the shipped models and the test models."""
    return build_models_dir(tmp_path_factory.mktemp("models"))
