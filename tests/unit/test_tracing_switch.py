"""Tracing's switch: off costs nothing to set up, on without the extra says what to do."""

import sys

import pytest

from inferfleet import Client
from inferfleet.errors import ConfigurationError
from inferfleet.settings import load_settings
from inferfleet.tracing import _trace_carrier, export_spans


def test_tracing_on_without_opentelemetry_says_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    settings = load_settings(redis_url="redis://127.0.0.1:9/0", otel=True)
    with pytest.raises(ConfigurationError, match=r"pip install 'inferfleet\[tracing\]'"):
        Client(settings=settings)
    with pytest.raises(ConfigurationError, match="INFERFLEET_OTEL"):
        export_spans("inferfleet-test")


def test_tracing_is_off_by_default_and_on_with_inferfleet_otel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().otel is False
    monkeypatch.setenv("INFERFLEET_OTEL", "1")
    assert load_settings().otel is True


def test_only_trace_headers_of_the_right_form_are_read_from_a_message() -> None:
    headers = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": 7,
               "id": "job", "baggage": "x=1"}
    assert _trace_carrier(headers) == {"traceparent": headers["traceparent"]}
    assert _trace_carrier({"traceparent": "x" * 513}) == {}
