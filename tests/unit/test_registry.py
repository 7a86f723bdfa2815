import os
import shutil
from pathlib import Path

import pytest

from inferfleet.errors import ModelLoadError, UnknownModelError
from inferfleet.models.registry import Registry


def test_the_shipped_models_are_listed_with_their_recorded_accuracy(models_dir: Path) -> None:
    registry = Registry(models_dir)
    assert {"digits", "digits_mlp", "bare_digits"} <= set(registry.names())
    assert registry.entry("digits").config.metrics["holdout_accuracy"] > 0.9
    assert registry.entry("bare_digits").config.labels is None


@pytest.mark.parametrize("name", ["../digits", "digits/../digits", "/etc", "..", "a b", ""])
def test_names_that_could_reach_outside_the_folder_are_refused(models_dir: Path,
                                                               name: str) -> None:
    with pytest.raises(UnknownModelError):
        Registry(models_dir).entry(name)


def test_a_symlink_out_of_the_models_folder_is_refused(tmp_path: Path, models_dir: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(models_dir / "digits", outside)
    os.symlink(outside, root / "escape")
    with pytest.raises(UnknownModelError, match="outside the models folder"):
        Registry(root).entry("escape")


def test_a_folder_without_a_model_file_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match=r"no model\.onnx"):
        Registry(tmp_path).entry("empty")


def test_an_invalid_config_is_reported_with_its_path(tmp_path: Path, models_dir: Path) -> None:
    shutil.copytree(models_dir / "digits", tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"version": "1", "surprise": true}')
    with pytest.raises(ModelLoadError, match=r"broken/config\.json"):
        Registry(tmp_path).entry("broken")
