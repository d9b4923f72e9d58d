"""Process streams of every shape reach the kernel whole; results go back chunked."""

from __future__ import annotations

import json

import pytest
from google.protobuf import duration_pb2

from gridpod_api import objects_pb2
from tests.worker.conftest import Pods
from tests.worker.handlers import pattern
from tests.worker.scripted_agent import (
    REFERENCE_CHUNK_SIZE,
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

MIB = 1024 * 1024


def _expected_concatenation(spec: TaskSpec) -> bytes:
    deps = spec.dependencies
    return spec.payload + b"".join(deps[key] for key in sorted(deps))


@pytest.mark.parametrize("kernel", ["concat", "concat-async"])
@pytest.mark.parametrize(
    ("chunk_size", "first_chunk_in_init", "payload_size"),
    [
        (1, False, 40),
        (7, True, 300),
        (4096, False, 50_000),
        (REFERENCE_CHUNK_SIZE, True, 200_000),
    ],
)
def test_chunked_payload_and_dependencies_reach_the_kernel(
    pods: Pods,
    kernel: str,
    chunk_size: int,
    first_chunk_in_init: bool,
    payload_size: int,
) -> None:
    spec = TaskSpec(
        payload=pattern(payload_size),
        dependencies={
            "b-large": pattern(payload_size + 17),
            "a-small": b"a",
            "c-exact": pattern(chunk_size),
        },
        kernel=kernel,
        chunk_size=chunk_size,
        first_chunk_in_init=first_chunk_in_init,
    )
    run = pods.shared("Toolbox").run(spec)
    assert run.error is None
    assert run.results == {"out": _expected_concatenation(spec)}
    assert max(run.result_chunk_sizes()) <= chunk_size


def test_reference_stream_puts_the_first_chunk_inside_init_request() -> None:
    # The harness itself: the shape the reference agent sends must be what is tested.
    spec = TaskSpec(payload=pattern(200_000), kernel="concat")
    requests = process_requests(spec)
    init = requests[0].compute.init_request
    assert len(init.payload.data) == REFERENCE_CHUNK_SIZE
    kinds = [r.compute.WhichOneof("type") for r in requests]
    assert kinds == ["init_request", "payload", "payload", "payload", "init_data"]
    assert {r.communication_token for r in requests} == {spec.token}


def _empty_payload_streams(spec: TaskSpec) -> dict[str, list[Compute]]:
    explicit = init_request(spec, b"")
    assert explicit.init_request.payload.WhichOneof("type") == "data"
    unset = init_request(spec)
    assert not unset.init_request.HasField("payload")
    tail = [
        dependency_key("d"),
        dependency_chunk(b"dep"),
        dependency_complete(),
        last_data(),
    ]
    return {
        "payload unset": [unset, payload_complete(), *tail],
        "empty chunk in init_request": [explicit, payload_complete(), *tail],
        "empty payload message": [unset, payload_chunk(b""), payload_complete(), *tail],
    }


@pytest.mark.parametrize(
    "shape", ["payload unset", "empty chunk in init_request", "empty payload message"]
)
def test_empty_payload(pods: Pods, shape: str) -> None:
    spec = TaskSpec(kernel="concat")
    stream = _empty_payload_streams(spec)[shape]
    run = pods.shared("Toolbox").run(spec, requests=with_token(spec.token, stream))
    assert run.error is None
    assert run.results == {"out": b"dep"}


@pytest.mark.parametrize("kernel", ["describe", "describe-async"])
def test_empty_dependency_is_present_and_empty(pods: Pods, kernel: str) -> None:
    pod = pods.shared("Toolbox")
    deps = {"empty": b"", "full": b"xyz"}
    described = pod.run(TaskSpec(payload=b"p", dependencies=deps, kernel=kernel))
    assert described.error is None
    assert json.loads(described.results["out"])["dependencies"] == ["empty", "full"]
    joined = pod.run(TaskSpec(payload=b"p", dependencies=deps, kernel="concat"))
    assert joined.results == {"out": b"pxyz"}


def test_empty_result_is_sent(pods: Pods) -> None:
    run = pods.shared("Toolbox").run(TaskSpec(payload=b"", kernel="concat"))
    assert run.error is None
    assert run.results == {"out": b""}


def test_eight_mib_payload_in_reference_chunks(pods: Pods) -> None:
    spec = TaskSpec(payload=pattern(8 * MIB), kernel="concat")
    run = pods.shared("Toolbox").run(spec)
    assert run.error is None
    assert run.results["out"] == spec.payload
    sizes = run.result_chunk_sizes()
    assert max(sizes) <= REFERENCE_CHUNK_SIZE
    assert sum(sizes) == 8 * MIB


def test_eight_mib_result_is_cut_at_the_chunk_size(pods: Pods) -> None:
    spec = TaskSpec(payload=str(8 * MIB).encode(), kernel="big", chunk_size=MIB)
    run = pods.shared("Toolbox").run(spec)
    assert run.error is None
    assert run.results["out"] == pattern(8 * MIB)
    sizes = run.result_chunk_sizes()
    assert all(0 < size <= MIB for size in sizes), sizes
    assert len(sizes) == 8


def test_messages_over_four_mib_are_accepted_both_ways(pods: Pods) -> None:
    # One 6 MiB chunk inside init_request, and a 6 MiB result chunk back.
    size = 6 * MIB
    spec = TaskSpec(payload=pattern(size), kernel="concat", chunk_size=size)
    run = pods.shared("Toolbox").run(spec)
    assert run.error is None
    assert run.results["out"] == spec.payload
    assert run.result_chunk_sizes() == [size]


@pytest.mark.parametrize("kernel", ["describe", "describe-async"])
def test_kernel_sees_the_task_and_its_options(pods: Pods, kernel: str) -> None:
    options = objects_pb2.TaskOptions(
        options={"flavour": "vanilla"},
        max_duration=duration_pb2.Duration(seconds=90, nanos=500_000_000),
        max_retries=3,
        priority=2,
        partition_id="cpu",
        application_name="pricing",
        engine_type="gridpod",
    )
    spec = TaskSpec(
        kernel=kernel,
        options=options,
        expected_outputs=["out"],
        dependencies={"curve": b"c"},
        session_id="session-42",
        chunk_size=5000,
    )
    run = pods.shared("Toolbox").run(spec)
    assert run.error is None
    assert json.loads(run.results["out"]) == {
        "session_id": "session-42",
        "task_id": spec.task_id,
        "expected_outputs": ["out"],
        "dependencies": ["curve"],
        "options": {"flavour": "vanilla", "kernel": kernel},
        "max_duration": 90.5,
        "max_retries": 3,
        "priority": 2,
        "partition_id": "cpu",
        "application_name": "pricing",
        "engine_type": "gridpod",
        "chunk_size": 5000,
    }


def test_unset_options_read_as_none(pods: Pods) -> None:
    run = pods.shared("Toolbox").run(TaskSpec(kernel="describe"))
    assert run.error is None
    seen = json.loads(run.results["out"])
    assert seen["options"] == {"kernel": "describe"}
    unset = ["max_duration", "max_retries", "priority", "partition_id"]
    assert {name: seen[name] for name in unset} == dict.fromkeys(unset)
