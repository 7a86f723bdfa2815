"""Every message a worker could pop is either admitted, and then Celery can build its
request, or refused with the rule it broke; nothing raises."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from celery.worker.request import Request
from hostile_messages import hostile_message, job_id_in, valid_envelope
from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection

from inferfleet import keys
from inferfleet.admission import Admitted, Refused, admit
from inferfleet.celery_app import make_app
from inferfleet.producer.publish import task_envelope
from inferfleet.settings import load_settings
from inferfleet.transport import Message

TASKS = frozenset({keys.TASK_NAME})


@pytest.fixture(scope="module")
def app() -> Iterator[Celery]:
    app = make_app(load_settings())

    @app.task(name=keys.TASK_NAME)
    def predict(**kwargs: object) -> None:
        """Never run here: only its requests are built."""

    yield app
    app.close()


@pytest.fixture(scope="module")
def channel() -> Iterator[object]:
    """A real kombu channel (the in-memory transport) to build messages on."""
    with Connection("memory://") as connection:
        yield connection.channel()


def celery_request(app: Celery, channel: object, verdict: Admitted) -> Request:
    """What Celery's worker builds from the admitted message, with the fields its
    strategy, events and tracer read."""
    envelope = {**verdict.envelope, "_inferfleet_decoded_body": verdict.body}
    envelope["properties"] = {**envelope["properties"], "delivery_tag": "t1"}  # as the take
    message = Message(envelope, channel=channel)
    request = Request(message, app=app, task=app.tasks[keys.TASK_NAME], hostname="h")
    assert (request.eta, request.expires) == (None, None)
    str(request.info()), request.humaninfo(), request.argsrepr, request.kwargsrepr
    return request


@given(st.one_of(hostile_message, st.binary(max_size=64),
                 st.text(max_size=64).map(str.encode)))
def test_any_message_is_admitted_whole_or_refused_with_a_reason(
        app: Celery, channel: object, raw: bytes) -> None:
    verdict = admit(raw, max_bytes=10_000_000, tasks=TASKS)
    if isinstance(verdict, Refused):
        assert verdict.reason
        assert verdict.job_id is None or verdict.job_id == job_id_in(raw)
        return
    assert verdict.body is not None
    request = celery_request(app, channel, verdict)
    assert request.id == job_id_in(raw) and request.name == keys.TASK_NAME
    assert isinstance(request.args, list) and isinstance(request.kwargs, dict)


def test_the_clients_envelope_carries_what_celerys_own_message_builder_makes(
        app: Celery) -> None:
    kwargs = {"v": 1, "model": "digits", "inputs": [], "submitted_at": 1.5}
    ours = json.loads(task_envelope("j1", keys.model_queue("digits"), kwargs, "{digits}",
                                    shadow="inferfleet.predict[digits]"))
    celerys = app.amqp.create_task_message("j1", keys.TASK_NAME, (), kwargs, argsrepr="()",
                                           kwargsrepr="{digits}", ignore_result=True,
                                           shadow="inferfleet.predict[digits]")
    assert ours["headers"] == celerys.headers
    assert json.loads(ours["body"]) == json.loads(json.dumps(celerys.body))
    assert {k: ours["properties"][k] for k in celerys.properties} == celerys.properties


def test_a_message_from_the_client_is_admitted_with_its_body_decoded(
        app: Celery, channel: object) -> None:
    kwargs = {"v": 1, "model": "digits", "inputs": {"dtype": "float32", "shape": [0, 64],
                                                    "data": ""}}
    job_id = str(uuid.uuid4())
    raw = task_envelope(job_id, keys.model_queue("digits"), kwargs, "{}")
    verdict = admit(raw, tasks=TASKS)
    assert isinstance(verdict, Admitted) and verdict.body == [[], kwargs, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    assert celery_request(app, channel, verdict).kwargs == kwargs


def test_a_foreign_clients_base64_body_is_admitted(app: Celery, channel: object) -> None:
    import base64

    envelope = valid_envelope()
    body = base64.b64encode(json.dumps(envelope["body"]).encode()).decode()
    raw = json.dumps({**envelope, "body": body, "properties": {
        **envelope["properties"], "body_encoding": "base64"}}).encode()
    verdict = admit(raw, tasks=TASKS)
    assert isinstance(verdict, Admitted) and verdict.body == envelope["body"]


def reason_for(envelope: dict[str, object], **changes: object) -> Refused:
    message = {**envelope, **changes}
    if not isinstance(message["body"], str):
        message["body"] = json.dumps(message["body"])
    verdict = admit(json.dumps(message).encode(), tasks=TASKS)
    assert isinstance(verdict, Refused)
    return verdict


@pytest.mark.parametrize(("change", "reason"), [
    ({"body": '{"a": 1}'}, "the body must be Celery's [args, kwargs, embed] triple, got an "
                          "object with keys ['a']"),
    ({"body": "5"}, "the body must be Celery's [args, kwargs, embed] triple, got 5"),
    ({"body": "[" * 100_000 + "]" * 100_000}, "the body is not JSON"),
    ({"body": "[[], [], {}]"}, "the body's kwargs must be an object, got a list of 0"),
    ({"body": '[[], {}, {"chain": 3}]'}, "the body's embed.chain must be a list or null"),
    ({"content-type": "application/x-python-serialize"}, "content type "
                                                         "'application/x-python-serialize'"),
])
def test_bodies_that_are_not_a_json_task_triple_are_refused_naming_the_job(
        change: dict[str, object], reason: str) -> None:
    envelope = valid_envelope()
    refused = reason_for(envelope, **change)
    assert refused.reason.startswith(reason)
    assert refused.job_id == envelope["headers"]["id"]  # type: ignore[index]


@pytest.mark.parametrize(("headers", "reason"), [
    ({"task": [1]}, "not a task message: headers.task is [1]"),
    ({"task": None}, "not a task message"),
    ({"task": "celery.backend_cleanup"}, "unknown task 'celery.backend_cleanup': this worker "
                                         "runs only ['inferfleet.predict']"),
    ({"id": None}, "headers.id None is not a job id"),
    ({"id": "has\nnewline"}, "headers.id 'has\\nnewline' is not a job id"),
    ({"id": "x" * 200}, "headers.id"),
    ({"eta": "2030-01-01T00:00:00"}, "headers.eta must be null"),
    ({"expires": 5}, "headers.expires must be null"),
    ({"timelimit": [1, 2, 3]}, "headers.timelimit must be [soft, hard]"),
    ({"retries": "x"}, "headers.retries must be a non-negative integer"),
    ({"shadow": 5}, "headers.shadow must be a string"),
])
def test_headers_without_a_known_task_and_a_job_id_or_of_the_wrong_types_are_refused(
        headers: dict[str, object], reason: str) -> None:
    envelope = valid_envelope()
    refused = reason_for(envelope, headers={**envelope["headers"], **headers})  # type: ignore[dict-item]
    assert refused.reason.startswith(reason)


def test_a_pickle_message_without_a_task_header_is_refused() -> None:
    envelope = valid_envelope()
    headers = {k: v for k, v in envelope["headers"].items() if k != "task"}  # type: ignore[attr-defined]
    refused = reason_for(envelope, headers=headers, body="gASVEAAAAAAAAAApfZR9lIeULg==",
                         **{"content-type": "application/x-python-serialize"})
    assert refused.reason.startswith("not a task message: headers.task is None")
    assert refused.job_id == envelope["headers"]["id"]  # type: ignore[index]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not a JSON message"), (b"[1, 2]", "not a kombu message envelope"),
    (b'{"body": "", "properties": {"priority": "high"}}',
     "not a kombu message envelope: properties.priority is 'high'"),
    (b'{"body": "", "properties": {}, "headers": []}',
     "not a kombu message envelope: headers is a list"),
])
def test_messages_that_are_not_envelopes_are_refused(raw: bytes, reason: str) -> None:
    verdict = admit(raw, tasks=TASKS)
    assert isinstance(verdict, Refused) and verdict.reason.startswith(reason)


def test_without_task_names_only_the_envelope_is_checked() -> None:
    reply = json.dumps({"body": "anything", "properties": {}, "headers": {}}).encode()
    assert isinstance(admit(reply), Admitted)
    big = json.dumps({"body": "x" * 100, "properties": {}, "headers": {"id": "j1"}}).encode()
    refused = admit(big, max_bytes=50)
    assert isinstance(refused, Refused) and refused.job_id == "j1"
    assert refused.reason.startswith(f"message of {len(big)} bytes is over max_message_bytes=50")
