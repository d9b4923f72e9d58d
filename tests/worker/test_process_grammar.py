"""A Process stream that breaks the grammar is refused, and the worker carries on."""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
import pytest

from gridpod_api import worker_common_pb2
from tests.worker.conftest import Pods
from tests.worker.scripted_agent import (
    SERVING,
    Compute,
    TaskSpec,
    dependency_chunk,
    dependency_complete,
    dependency_key,
    init_request,
    last_data,
    payload_chunk,
    payload_complete,
    process_requests,
    with_token,
)

Requests = list[worker_common_pb2.ProcessRequest]


def _stream(*computes: Callable[[TaskSpec], Compute]) -> Callable[[TaskSpec], Requests]:
    def build(spec: TaskSpec) -> Requests:
        return with_token(spec.token, [make(spec) for make in computes])

    return build


def _init(spec: TaskSpec) -> Compute:
    return init_request(spec)


def _fixed(compute: Compute) -> Callable[[TaskSpec], Compute]:
    return lambda spec: compute


def _late_payload(spec: TaskSpec) -> Requests:
    return process_requests(spec) + with_token(spec.token, [payload_chunk(b"late")])


def _token_changes(spec: TaskSpec) -> Requests:
    requests = process_requests(spec)
    requests[1].communication_token = "another-token"
    return requests


PAYLOAD_DONE = (_init, _fixed(payload_complete()))

# Each case: how the stream is broken, and a word the refusal must contain.
VIOLATIONS: dict[str, tuple[Callable[[TaskSpec], Requests], str]] = {
    "data before init_request": (_stream(_fixed(dependency_chunk(b"x"))), r"\bdata\b"),
    "payload before init_request": (
        _stream(_fixed(payload_chunk(b"x"))),
        r"\bpayload\b",
    ),
    "init_data before init_request": (
        _stream(_fixed(dependency_key("k"))),
        r"\binit_data\b",
    ),
    "init_data before payload complete": (
        _stream(_init, _fixed(payload_chunk(b"x")), _fixed(dependency_key("k"))),
        r"\binit_data\b",
    ),
    "data before its init_data": (
        _stream(*PAYLOAD_DONE, _fixed(dependency_chunk(b"x"))),
        r"\bdata\b",
    ),
    "dependency without any data chunk": (
        _stream(
            *PAYLOAD_DONE,
            _fixed(dependency_key("k")),
            _fixed(dependency_complete()),
            _fixed(last_data()),
        ),
        r"\bdata\b",
    ),
    "init_request twice": (_stream(_init, _init), r"\binit_request\b"),
    "payload after last_data": (_late_payload, r"\bpayload\b"),
    "communication token changes": (_token_changes, r"token"),
}

# Streams that end before init_data.last_data: the refusal says what was expected.
TRUNCATED: dict[str, Callable[[TaskSpec], Requests]] = {
    "no message at all": _stream(),
    "after init_request": _stream(_init),
    "inside the payload": _stream(_init, _fixed(payload_chunk(b"x"))),
    "inside a dependency": _stream(
        *PAYLOAD_DONE, _fixed(dependency_key("k")), _fixed(dependency_chunk(b"x"))
    ),
    "before last_data": _stream(*PAYLOAD_DONE),
}


def _refusal(pods: Pods, build: Callable[[TaskSpec], Requests]) -> grpc.Call:
    pod = pods.shared("Toolbox")
    spec = TaskSpec(payload=b"p", kernel="concat")
    with pytest.raises(grpc.RpcError) as caught:
        pod.run(spec, requests=build(spec), timeout=10)
    assert isinstance(caught.value, grpc.Call)
    return caught.value


def _assert_still_serving(pods: Pods) -> None:
    pod = pods.shared("Toolbox")
    assert pod.client.health() == SERVING
    run = pod.run(TaskSpec(payload=b"after", dependencies={"d": b"!"}, kernel="concat"))
    assert run.error is None
    assert run.results == {"out": b"after!"}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_violation_is_refused_naming_the_message(pods: Pods, case: str) -> None:
    build, word = VIOLATIONS[case]
    refusal = _refusal(pods, build)
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT, refusal.details()
    assert re.search(word, refusal.details() or ""), refusal.details()
    _assert_still_serving(pods)


@pytest.mark.parametrize("case", TRUNCATED)
def test_stream_closed_early_is_refused(pods: Pods, case: str) -> None:
    refusal = _refusal(pods, TRUNCATED[case])
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT, refusal.details()
    assert refusal.details()
    _assert_still_serving(pods)
