"""The control plane's limits: a request past one is refused with RESOURCE_EXHAUSTED
naming the limit and its value, and stores nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import grpc
import pytest

from agent.backend import TaskQuery, open_backend
from agent.control import ControlPlane, ControlPlaneConfig
from gridpod_api import (
    events_common_pb2,
    events_service_pb2_grpc,
    objects_pb2,
    submitter_common_pb2,
    submitter_service_pb2_grpc,
)
from tests.control.submitter_support import (
    CONFIG,
    Grid,
    new_session,
    serve,
    short_tempdir,
    stored_blobs,
    task_request,
)
from worker_sdk._address import Address

Common = submitter_common_pb2
Large = Common.CreateLargeTaskRequest
LIMITED = replace(
    CONFIG,
    max_payload_size=100,
    max_tasks_per_request=2,
    max_data_dependencies=1,
    max_expected_outputs=2,
    max_streams_per_client=2,
)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
async def grid() -> AsyncIterator[Grid]:
    async for served in serve(LIMITED):
        yield served


async def _stream(messages: Sequence[Large]) -> AsyncIterator[Large]:
    for message in messages:
        yield message


def _large(session_id: str, *tasks: objects_pb2.TaskRequest) -> list[Large]:
    messages = [Large(init_request=Large.InitRequest(session_id=session_id))]
    for task in tasks:
        header = objects_pb2.TaskRequestHeader(
            expected_output_keys=task.expected_output_keys,
            data_dependencies=task.data_dependencies,
        )
        messages.append(Large(init_task=objects_pb2.InitTaskRequest(header=header)))
        # In pieces: the limit holds for the whole payload, not for each chunk.
        for start in range(0, len(task.payload), 40):
            chunk = objects_pb2.DataChunk(data=task.payload[start : start + 40])
            messages.append(Large(task_payload=chunk))
        messages.append(Large(task_payload=objects_pb2.DataChunk(data_complete=True)))
    messages.append(Large(init_task=objects_pb2.InitTaskRequest(last_task=True)))
    return messages


async def _refused_both_ways(grid: Grid, *tasks: objects_pb2.TaskRequest) -> list[str]:
    """The details of refusing the tasks as CreateSmallTasks and CreateLargeTasks,
    each of which must store nothing."""
    session_id = await new_session(grid)
    blobs = stored_blobs(grid)
    details = []
    for call in (
        grid.stub.CreateSmallTasks(
            Common.CreateSmallTaskRequest(session_id=session_id, task_requests=tasks)
        ),
        grid.stub.CreateLargeTasks(_stream(_large(session_id, *tasks))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == EXHAUSTED, refused.value
        details.append(refused.value.details() or "")
    counts = await grid.backend.count_tasks(TaskQuery(session_ids=[session_id]))
    assert counts == {}
    assert stored_blobs(grid) == blobs
    return details


async def test_a_payload_past_the_limit(grid: Grid) -> None:
    details = await _refused_both_ways(
        grid, task_request(["a"], b"x" * 100), task_request(["b"], b"x" * 101)
    )
    for text in details:
        assert "payload of task 1" in text and "max_payload_size (100 bytes)" in text


async def test_too_many_tasks(grid: Grid) -> None:
    details = await _refused_both_ways(
        grid, *(task_request([f"out{n}"], b"x" * 60) for n in range(3))
    )
    for text in details:
        assert "max_tasks_per_request (2)" in text


async def test_too_many_expected_outputs(grid: Grid) -> None:
    details = await _refused_both_ways(
        grid, task_request(["a"]), task_request(["b", "c", "d"])
    )
    for text in details:
        assert "task 1 has 3 expected outputs" in text
        assert "max_expected_outputs (2)" in text


async def test_too_many_data_dependencies(grid: Grid) -> None:
    details = await _refused_both_ways(
        grid, task_request(["a"]), task_request(["b"], dependencies=["a", "a2"])
    )
    for text in details:
        assert "task 1 has 2 data dependencies" in text
        assert "max_data_dependencies (1)" in text


async def test_requests_within_the_limits_are_served(grid: Grid) -> None:
    session_id = await new_session(grid)
    tasks = [task_request(["a"], b"x" * 100), task_request(["b", "c"], b"", ["a"])]
    reply = await grid.stub.CreateLargeTasks(_stream(_large(session_id, *tasks)))
    statuses = reply.creation_status_list.creation_statuses
    assert [s.WhichOneof("Status") for s in statuses] == ["task_info"] * 2


# -- streams per client ---------------------------------------------------------------


async def _watching(
    stub: submitter_service_pb2_grpc.SubmitterAsyncStub,
) -> grpc.aio.StreamStreamCall[Common.WatchResultRequest, Common.WatchResultStream]:
    """A WatchResults stream, open once its first reply came."""
    call = stub.WatchResults(_requests_then_wait())
    await call.read()
    return call


async def _requests_then_wait() -> AsyncIterator[Common.WatchResultRequest]:
    yield Common.WatchResultRequest(result_ids=["anything"])
    await asyncio.Event().wait()  # never half-closes: the stream stays open


async def test_streams_past_the_limit_are_refused_until_one_ends(grid: Grid) -> None:
    first = await _watching(grid.stub)
    second = await _watching(grid.stub)
    refused = grid.stub.WatchResults(_requests_then_wait())
    assert await refused.code() == EXHAUSTED
    details = await refused.details()
    assert "already has 2 streams open" in details
    assert "max_streams_per_client is 2" in details
    first.cancel()
    await asyncio.sleep(0.2)
    # The first one's place is free again, for any kind of stream.
    replies = grid.stub.TryGetResultStream(
        objects_pb2.ResultRequest(session="none", result_id="none")
    )
    assert await replies.code() == grpc.StatusCode.NOT_FOUND
    third = await _watching(grid.stub)
    second.cancel()
    third.cancel()


async def test_a_clients_connections_share_one_count() -> None:
    """Over TCP, streams from one host count together, whatever their port, and
    the Events service counts with the Submitter."""
    config = ControlPlaneConfig(max_streams_per_client=2)
    with short_tempdir() as folder:
        backend = open_backend(f"sqlite://{folder / 'state.db'}")
        plane = ControlPlane(backend, config, Address("tcp", "127.0.0.1:0"))
        await plane.start()
        target = str(plane.bound_address.target)
        channels = [grpc.aio.insecure_channel(target) for _ in range(2)]
        try:
            session = await backend.create_session(objects_pb2.TaskOptions(), [])
            events = events_service_pb2_grpc.EventsStub(channels[0]).GetEvents(
                events_common_pb2.EventSubscriptionRequest(
                    session_id=session.session_id
                )
            )
            await events.initial_metadata()
            watch = await _watching(
                submitter_service_pb2_grpc.SubmitterStub(channels[0])
            )
            refused = submitter_service_pb2_grpc.SubmitterStub(
                channels[1]
            ).WatchResults(_requests_then_wait())
            assert await refused.code() == EXHAUSTED
            assert "client ipv4:127.0.0.1 " in await refused.details()
            events.cancel()
            watch.cancel()
        finally:
            for channel in channels:
                await channel.close()
            await plane.stop(0)
            await backend.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_streams_per_client"):
        ControlPlaneConfig(max_streams_per_client=0)
    with pytest.raises(ValueError, match="max_payload_size"):
        ControlPlaneConfig(max_payload_size=-1)
