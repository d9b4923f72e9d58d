"""A Submitter served over a unix socket on a fresh SQLite state, and short ways to
play the agent's part (acquire, complete, fail) from a test."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.backend import (
    Attempt,
    Backend,
    NotFound,
    SqliteBackend,
    Subscription,
    TaskRecord,
    Topic,
)
from agent.control._config import ControlPlaneConfig
from agent.control._submitter import SubmitterService
from gridpod_api import (
    objects_pb2,
    submitter_common_pb2,
    submitter_service_pb2_grpc,
)

Common = submitter_common_pb2
LEASE = timedelta(seconds=60)
AGENT = "test-agent"
# Small enough that results of a few kilobytes come in several chunks. The safety
# poll is long so that a wait that misses its wake-up fails by its timeout.
CONFIG = ControlPlaneConfig(
    data_chunk_max_size=1000, requery_interval=0.005, safety_poll=60.0
)
# A bound on every call that should answer soon.
PROMPT = 10.0


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A fresh directory with a short path: unix socket paths stop at 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="gp-submitter-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class SpiedBackend(SqliteBackend):
    """Keeps the subscriptions it hands out, to tell whether calls close them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.subscriptions: list[Subscription] = []
        self.closed: list[Subscription] = []

    def subscribe(self, topics: Topic | None = None) -> Subscription:
        subscription = super().subscribe(topics)
        original = subscription.close

        def close() -> None:
            self.closed.append(subscription)
            original()

        subscription.close = close  # type: ignore[method-assign]
        self.subscriptions.append(subscription)
        return subscription

    @property
    def open_subscriptions(self) -> int:
        return len({id(s) for s in self.subscriptions} - {id(s) for s in self.closed})


@dataclass
class Grid:
    """One test's Submitter, its backend and a client stub."""

    backend: SpiedBackend
    state: Path
    stub: submitter_service_pb2_grpc.SubmitterAsyncStub
    address: str

    def open_backend(self) -> Backend:
        """Another backend on the same state, as another process would open."""
        return SqliteBackend.from_url(f"sqlite://{self.state}")


async def serve(
    config: ControlPlaneConfig = CONFIG,
) -> AsyncIterator[Grid]:
    with short_tempdir() as folder:
        state = folder / "state.db"
        backend = SpiedBackend(state)
        server = grpc.aio.server()
        submitter_service_pb2_grpc.add_SubmitterServicer_to_server(
            SubmitterService(backend, config), server
        )
        address = f"unix://{folder / 'submitter.sock'}"
        server.add_insecure_port(address)
        await server.start()
        channel = grpc.aio.insecure_channel(address)
        try:
            stub = submitter_service_pb2_grpc.SubmitterStub(channel)
            yield Grid(backend, state, stub, address)
        finally:
            await channel.close()
            await server.stop(None)
            await backend.close()


@pytest.fixture(name="grid")
async def grid_fixture() -> AsyncIterator[Grid]:
    """A Submitter of the test's own; import it into a test module to use it."""
    async for served in serve():
        yield served


# -- requests -------------------------------------------------------------------------


def options(
    *,
    max_retries: int = 0,
    priority: int = 0,
    partition_id: str = "",
    **extra: str,
) -> objects_pb2.TaskOptions:
    message = objects_pb2.TaskOptions(
        max_retries=max_retries, priority=priority, partition_id=partition_id
    )
    message.options.update(extra)
    return message


async def new_session(
    grid: Grid,
    defaults: objects_pb2.TaskOptions | None = None,
    partitions: Sequence[str] = (),
) -> str:
    reply = await grid.stub.CreateSession(
        Common.CreateSessionRequest(
            default_task_option=defaults or options(), partition_ids=partitions
        )
    )
    return reply.session_id


def task_request(
    outputs: Sequence[str],
    payload: bytes = b"payload",
    dependencies: Sequence[str] = (),
) -> objects_pb2.TaskRequest:
    return objects_pb2.TaskRequest(
        expected_output_keys=outputs, data_dependencies=dependencies, payload=payload
    )


async def create_tasks(
    grid: Grid,
    session_id: str,
    *tasks: objects_pb2.TaskRequest,
    task_options: objects_pb2.TaskOptions | None = None,
) -> list[str]:
    """Create tasks that must all be accepted; their ids."""
    reply = await grid.stub.CreateSmallTasks(
        Common.CreateSmallTaskRequest(
            session_id=session_id, task_options=task_options, task_requests=tasks
        )
    )
    statuses = reply.creation_status_list.creation_statuses
    assert [s.WhichOneof("Status") for s in statuses] == ["task_info"] * len(tasks), (
        statuses
    )
    return [s.task_info.task_id for s in statuses]


def status_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error.details() or ""


# When one of its writes fails because the server already ended the call, grpc.aio's
# client sets this status in place of the server's, if it had not read that one yet.
_STATUS_LOST_BY_THE_CLIENT = (grpc.StatusCode.INTERNAL, "Internal error from Core")


async def refusal_of(
    call: Callable[[], Awaitable[object]], attempts: int = 5
) -> tuple[grpc.StatusCode, str]:
    """The status of a client stream that the server refuses before its end, made
    again while the client library lost the server's answer to that race (a
    refused stream stores nothing, so the next try meets the same state)."""
    for _ in range(attempts):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        status = status_of(caught.value)
        if status != _STATUS_LOST_BY_THE_CLIENT:
            break
    return status


# -- the agent's part -------------------------------------------------------------


async def take(backend: Backend, partition: str = "") -> Attempt:
    """Acquire and start the next queued task, which must exist."""
    attempt = await backend.acquire(AGENT, partition, LEASE)
    assert attempt is not None, "no task is queued"
    await backend.start(attempt)
    return attempt


async def complete_next(
    backend: Backend, values: dict[str, bytes] | None = None
) -> TaskRecord:
    """Run the next queued task to completion: each output's value is its key."""
    attempt = await take(backend)
    if values is None:
        values = {key: key.encode() for key in attempt.task.expected_outputs}
    await backend.complete(attempt, values)
    return await backend.get_task(attempt.task.task_id)


async def fail_next(backend: Backend, error: str = "kernel failed") -> TaskRecord:
    return await backend.fail(await take(backend), error)


async def has_result(backend: Backend, session_id: str, key: str) -> bool:
    try:
        await backend.get_result(session_id, key)
    except NotFound:
        return False
    return True


async def not_yet(call: asyncio.Future[Any], delay: float = 0.2) -> None:
    """Check that ``call`` is still waiting after ``delay`` seconds."""
    done, _ = await asyncio.wait({call}, timeout=delay)
    assert not done, f"answered too early: {call.result() if done else None}"


def stored_blobs(grid: Grid) -> int:
    """How many blobs the state file holds, read in the file itself: the backend
    has no listing of blobs."""
    with contextlib.closing(sqlite3.connect(grid.state)) as db:
        (count,) = db.execute("SELECT count(*) FROM blobs").fetchone()
        return int(count)
