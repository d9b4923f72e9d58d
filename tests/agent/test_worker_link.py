"""The agent's side of a Process call, against a real worker server in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent._worker import Dispatch, WorkerLink
from agent.backend import (
    Attempt,
    BackendError,
    NewTask,
    SqliteBackend,
    TaskRecord,
)
from gridpod_api import worker_common_pb2, worker_service_pb2_grpc
from tests.agent.conftest import options
from worker_sdk import Address, Task, TaskHandler, WorkerConfig, WorkerServer, kernel

_CHUNK = 1024


class Counting(TaskHandler):
    """Counts the tasks whose kernel ran, and each payload's size."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @kernel
    async def size(self, task: Task) -> bytes:
        self.sizes.append(len(task.payload))
        return b"%d" % len(task.payload)


class KeepingAgent:
    """Stands for the agent's service: keeps the results sent to it."""

    def __init__(self) -> None:
        self.results: dict[str, bytes] = {}

    async def send_result(
        self, token: str, key: str, data: Any, chunk_size: int
    ) -> None:
        self.results[key] = bytes(data)

    async def create_tasks(self, *args: Any) -> Any:
        raise NotImplementedError

    async def get_data(self, *args: Any) -> Any:
        raise NotImplementedError


class BrokenMidway:
    """The backend, except that a payload read fails after its first chunk."""

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    async def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        async for chunk in self._backend.read_blob(blob_id):
            yield chunk
            raise BackendError("the state file went away")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


async def _payload(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _CHUNK):
        yield data[start : start + _CHUNK]


async def _attempt(backend: SqliteBackend, payload: bytes) -> Attempt:
    session = await backend.create_session(options("size"), [""])
    blob = await backend.write_blob(_payload(payload))
    [task] = await backend.submit_tasks(session.session_id, [NewTask(blob, ("out",))])
    assert isinstance(task, TaskRecord), task
    attempt = await backend.acquire("link-test", "", timedelta(seconds=30))
    assert attempt is not None
    return attempt


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Counting, Address]]:
    handler = Counting()
    config = WorkerConfig(
        address=Address.parse(f"unix://{tmp_path / 'worker.sock'}"),
        agent_address=Address.parse(f"unix://{tmp_path / 'agent.sock'}"),
    )
    server = WorkerServer(handler, config, agent=KeepingAgent())
    await server.start()
    try:
        yield handler, config.address
    finally:
        await server.stop()


async def test_a_payload_that_cannot_be_read_cancels_the_call_and_says_why(
    tmp_path: Path, served: tuple[Counting, Address]
) -> None:
    handler, address = served
    backend = SqliteBackend(tmp_path / "state.db")
    broken = WorkerLink(address, BrokenMidway(backend), _CHUNK)  # type: ignore[arg-type]
    link = WorkerLink(address, backend, _CHUNK)
    try:
        dispatch = Dispatch.new()
        with pytest.raises(BackendError, match="went away"):
            await broken.process(
                await _attempt(backend, b"x" * 3 * _CHUNK), None, 10.0, dispatch
            )
        # The worker got the first request only: the call was cancelled, and the
        # kernel never ran.
        assert dispatch.begun.result() is True
        assert not dispatch.sent.done()
        # The worker is still there for the next task.
        reply = await link.process(await _attempt(backend, b"y" * 2500), None, 10.0)
        assert reply.output.WhichOneof("type") == "ok"
        assert handler.sizes == [2500]
    finally:
        await broken.close()
        await link.close()
        await backend.close()


class Refusing(worker_service_pb2_grpc.WorkerServicer):
    """Reads the first request of a Process call, then ends the call."""

    async def Process(self, requests: Any, context: Any) -> Any:
        await anext(requests)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not this one")

    async def HealthCheck(self, request: Any, context: Any) -> Any:
        return worker_common_pb2.HealthCheckReply(
            status=worker_common_pb2.HealthCheckReply.ServingStatus.SERVING
        )


async def test_a_worker_that_ends_the_call_early_gives_its_status(
    tmp_path: Path,
) -> None:
    server = grpc.aio.server()
    worker_service_pb2_grpc.add_WorkerServicer_to_server(Refusing(), server)
    socket = tmp_path / "refusing.sock"
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    backend = SqliteBackend(tmp_path / "state.db")
    link = WorkerLink(Address.parse(f"unix://{socket}"), backend, _CHUNK)
    try:
        # More requests than the worker reads before it ends the call.
        attempt = await _attempt(backend, b"z" * 64 * _CHUNK)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await link.process(attempt, None, 10.0)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == "not this one"
    finally:
        await link.close()
        await backend.close()
        await server.stop(None)


async def test_stopping_the_attempt_while_it_writes_cancels_the_call(
    tmp_path: Path, served: tuple[Counting, Address]
) -> None:
    handler, address = served
    backend = SqliteBackend(tmp_path / "state.db")
    link = WorkerLink(address, backend, _CHUNK)
    try:
        attempt = await _attempt(backend, b"w" * 64 * _CHUNK)
        dispatch = Dispatch.new()
        runner = asyncio.ensure_future(link.process(attempt, None, 10.0, dispatch))
        assert await dispatch.begun
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert handler.sizes == []
    finally:
        await link.close()
        await backend.close()
