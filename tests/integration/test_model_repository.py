"""The model repository while the fleet runs: models added with `inferfleet models add` are
served by running workers, and an add that would serve a stale config is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import worker_starter
from faultkit import holdout_rows, wait_until

from inferfleet import Client
from inferfleet.errors import UnknownModelError
from inferfleet.fleet import stop_processes
from inferfleet.settings import Settings


def models_cli(models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERFLEET_MODELS_DIR": str(models)}
    return subprocess.run([sys.executable, "-m", "inferfleet", "models", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_model_added_while_workers_run_is_served_without_a_restart(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir / "digits", models / "digits")
    settings = private_settings.model_copy(update={"models_dir": models})
    start, started = worker_starter(settings, tmp_path / "logs")
    try:
        start()  # every model in the folder, as the README starts it
        iris = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
        with Client(settings=settings) as client:
            with pytest.raises(UnknownModelError) as refused:
                client.submit("iris", iris)
            assert "Models served now: digits" in str(refused.value)
            assert "validate=False" not in str(refused.value)

            added = models_cli(models, "add", str(models_dir / "iris_zipmap" / "model.onnx"),
                               "--name", "iris")
            assert added.returncode == 0, added.stderr
            assert "classes ['0', '1', '2']" in added.stdout

            def accepted() -> bool:
                try:
                    client.signature("iris")
                except UnknownModelError:
                    return False
                return True
            wait_until(accepted, timeout_s=30, what="the new model's signature")
            result = client.submit("iris", iris).result(timeout=30)
            assert result.status == "succeeded"
            assert result.column("label") == ["0", "2"]
            # The models the worker started with are still served.
            digits = client.submit("digits", holdout_rows(models_dir, 3)).result(timeout=30)
            assert digits.status == "succeeded"
    finally:
        stop_processes(started)


def test_a_new_version_that_does_not_suit_the_kept_config_is_refused(
        tmp_path: Path, models_dir: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir / "digits", models / "scorer")
    config = models / "scorer" / "config.json"
    config.write_text(config.read_text().replace('"version": "1"', '"version": "4"'))
    iris = str(models_dir / "iris_zipmap" / "model.onnx")

    refused = models_cli(models, "add", iris, "--name", "scorer")
    assert refused.returncode != 0
    assert "config names outputs ['probabilities'] that the graph lacks" in refused.stderr
    assert "--fresh-config" in refused.stderr
    assert '"version": "4"' in config.read_text()  # nothing changed

    fresh = models_cli(models, "add", iris, "--name", "scorer", "--fresh-config")
    assert fresh.returncode == 0, fresh.stderr
    assert "added scorer version 5" in fresh.stdout and "kept" not in fresh.stdout
    kept = models_cli(models, "add", iris, "--name", "scorer")
    assert kept.returncode == 0, kept.stderr
    assert "added scorer version 6" in kept.stdout and "kept the config" in kept.stdout
