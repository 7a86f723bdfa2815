import pytest

from inferfleet.errors import ConfigurationError
from inferfleet.settings import load_settings, mask_url


def test_settings_come_from_inferfleet_environment_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERFLEET_MAX_BATCH_ROWS", "77")
    monkeypatch.setenv("INFERFLEET_REDIS_URL", "redis://10.0.0.1:7000/2")
    settings = load_settings()
    assert settings.max_batch_rows == 77
    assert settings.redis_url == "redis://10.0.0.1:7000/2"


def test_a_bad_value_is_refused_with_the_setting_named() -> None:
    with pytest.raises(ConfigurationError, match="max_batch_rows"):
        load_settings(max_batch_rows=0)
    with pytest.raises(ConfigurationError, match="must start with redis://"):
        load_settings(redis_url="http://example")


def test_passwords_never_appear_in_the_settings_repr() -> None:
    settings = load_settings(redis_url="rediss://fleet:s3cret@cache.example:6380/0")
    assert "s3cret" not in repr(settings)
    assert "fleet:***@cache.example:6380" in repr(settings)
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_visibility_timeout_shorter_than_the_longest_hold_is_refused() -> None:
    settings = load_settings(prefetch_multiplier=4, job_time_limit_s=60, visibility_timeout_s=300)
    with pytest.raises(ConfigurationError, match=r"must exceed the longest hold time .* = 300"):
        settings.check_visibility_timeout()
    load_settings(prefetch_multiplier=4, job_time_limit_s=60,
                  visibility_timeout_s=301).check_visibility_timeout()
