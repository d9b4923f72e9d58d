"""The Events service: a session's events as another process commits them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from agent.backend import Backend, BackendError, NewTask, TaskRecord, open_backend
from agent.control import ControlPlaneConfig
from agent.control._events import response
from gridpod_api import (
    events_common_pb2,
    events_service_pb2_grpc,
    result_status_pb2,
    task_status_pb2,
)
from tests.control.conftest import (
    RunningControlPlane,
    acquire,
    complete,
    new_session,
    run_to_completion,
    serving,
    submit,
    task_options,
)

_Response = events_common_pb2.EventSubscriptionResponse
_Stream = grpc.aio.UnaryStreamCall[
    events_common_pb2.EventSubscriptionRequest, _Response
]


async def subscribe(plane: RunningControlPlane, session_id: str) -> _Stream:
    """A subscription in place: what is committed from now on is streamed."""
    stub = events_service_pb2_grpc.EventsStub(plane.channel)
    call = stub.GetEvents(
        events_common_pb2.EventSubscriptionRequest(session_id=session_id)
    )
    await call.initial_metadata()
    return call


async def receive(
    call: _Stream, done: Callable[[list[_Response]], bool], timeout: float = 10
) -> list[_Response]:
    """The messages of the stream until ``done`` holds for them."""
    received: list[_Response] = []

    async def read() -> None:
        async for message in call:
            received.append(message)
            if done(received):
                return

    try:
        await asyncio.wait_for(read(), timeout)
    finally:
        call.cancel()
    return received


def task_status(message: _Response) -> tuple[str, int] | None:
    if message.WhichOneof("update") == "task_status_update":
        update = message.task_status_update
        return update.task_id, update.status
    if message.WhichOneof("update") == "new_task":
        return message.new_task.task_id, message.new_task.status
    return None


def result_status(message: _Response) -> tuple[str, str, int] | None:
    kind = message.WhichOneof("update")
    if kind == "new_result":
        return kind, message.new_result.result_id, message.new_result.status
    if kind == "result_status_update":
        update = message.result_status_update
        return kind, update.result_id, update.status
    return None


def ended(task_id: str) -> Callable[[list[_Response]], bool]:
    final = (task_id, task_status_pb2.TASK_STATUS_COMPLETED)
    return lambda received: task_status(received[-1]) == final


async def test_a_task_s_whole_life_in_commit_order(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    await submit(backend, session_id, ["earlier"])
    await run_to_completion(backend)
    before = await backend.last_event(session_id)
    call = await subscribe(control_plane, session_id)
    task = await submit(backend, session_id, ["out"])
    other_session = await new_session(backend)
    await submit(backend, other_session, ["elsewhere"])
    await complete(backend, await acquire(backend))

    received = await receive(call, ended(task.task_id))
    expected = await backend.read_events(before, session_id=session_id)
    assert received == [response(event) for event in expected]
    assert {message.session_id for message in received} == {session_id}
    statuses = [task_status(message) for message in received]
    assert [status for status in statuses if status is not None] == [
        (task.task_id, task_status_pb2.TASK_STATUS_SUBMITTED),
        (task.task_id, task_status_pb2.TASK_STATUS_DISPATCHED),
        (task.task_id, task_status_pb2.TASK_STATUS_PROCESSING),
        (task.task_id, task_status_pb2.TASK_STATUS_COMPLETED),
    ]
    assert [
        result_status(message) for message in received if result_status(message)
    ] == [
        ("new_result", "out", result_status_pb2.RESULT_STATUS_CREATED),
        ("result_status_update", "out", result_status_pb2.RESULT_STATUS_COMPLETED),
    ]
    new_task = next(
        m.new_task for m in received if m.WhichOneof("update") == "new_task"
    )
    assert list(new_task.expected_output_keys) == ["out"]
    assert new_task.payload_id == task.payload.blob_id
    assert new_task.origin_task_id == task.task_id


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_retry_and_a_delegated_output(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend, task_options(max_retries=1))
    call = await subscribe(control_plane, session_id)
    first = await submit(backend, session_id, ["final"])
    retry = await backend.fail(await acquire(backend), "worker lost")
    attempt = await acquire(backend)
    payload = await backend.write_blob(_chunks(b"sub"))
    [child] = await backend.stage_subtasks(attempt, [NewTask(payload, ["final"])])
    assert isinstance(child, TaskRecord)
    await backend.complete(attempt)

    received = await receive(call, ended(retry.task_id))
    new_tasks = [m.new_task for m in received if m.WhichOneof("update") == "new_task"]
    assert [(t.task_id, list(t.retry_of_ids), t.origin_task_id) for t in new_tasks] == [
        (first.task_id, [], first.task_id),
        (retry.task_id, [first.task_id], first.task_id),
        (child.task_id, [], child.task_id),
    ]
    # The retry takes the output over, then delegates it to the subtask.
    owners = [
        (
            m.result_owner_update.previous_owner_id,
            m.result_owner_update.current_owner_id,
        )
        for m in received
        if m.WhichOneof("update") == "result_owner_update"
    ]
    assert owners == [
        (first.task_id, retry.task_id),
        (retry.task_id, child.task_id),
    ]


async def test_unknown_or_missing_session(control_plane: RunningControlPlane) -> None:
    stub = events_service_pb2_grpc.EventsStub(control_plane.channel)
    unknown = stub.GetEvents(events_common_pb2.EventSubscriptionRequest(session_id="x"))
    assert await unknown.code() == grpc.StatusCode.NOT_FOUND
    missing = stub.GetEvents(events_common_pb2.EventSubscriptionRequest())
    assert await missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await missing.details() or "").startswith("session_id")


async def _read_all(call: _Stream) -> None:
    async for _ in call:
        pass


async def test_a_stream_that_fell_behind_ends_with_data_loss(
    tmp_path: Path, socket_dir: Path
) -> None:
    # Ten events kept, and a stream that reads at most twice a second.
    url = f"sqlite://{tmp_path / 'state.db'}?events=10"
    config = ControlPlaneConfig(requery_interval=0.5)
    writer = open_backend(url)
    try:
        async with serving(url, config, socket_dir) as plane:
            session_id = await new_session(writer)
            call = await subscribe(plane, session_id)
            for n in range(20):
                await submit(writer, session_id, [f"r{n}"])
            # The status follows the events sent before it: read them all.
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(_read_all(call), 10)
            assert ended.value.code() == grpc.StatusCode.DATA_LOSS
            assert "subscribe again" in (ended.value.details() or "")
    finally:
        await writer.close()


async def test_a_backend_failure_while_following_ends_with_internal(
    control_plane: RunningControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clear status, as every other call gets for it; not UNKNOWN.
    async def failing(*args: object, **kwargs: object) -> list[object]:
        raise BackendError("the backend is down")

    session_id = await new_session(control_plane.plane._backend)
    monkeypatch.setattr(control_plane.plane._backend, "read_events", failing)
    call = await subscribe(control_plane, session_id)
    assert await call.code() == grpc.StatusCode.INTERNAL
    assert "the backend is down" in (await call.details() or "")
