"""Short ways to drive a backend through the steps the tests are not about."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from multiprocessing.queues import Queue

from agent.backend import (
    Attempt,
    Backend,
    BlobRef,
    NewTask,
    TaskRecord,
    TaskRefusal,
    open_backend,
)
from gridpod_api import objects_pb2

LEASE = timedelta(seconds=30)
AGENT = "agent-1"


@dataclass(frozen=True)
class SharedState:
    """Where one test's state lives: every backend opened on ``url`` shares it."""

    url: str

    def open(self) -> Backend:
        return open_backend(self.url)


def later(hours: float = 1) -> datetime:
    """A moment past every lease the tests take."""
    return datetime.now(timezone.utc) + timedelta(hours=hours)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def blob(backend: Backend, data: bytes = b"payload") -> BlobRef:
    return await backend.write_blob(chunks(data))


async def read(stream: AsyncIterable[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def session(
    backend: Backend,
    options: objects_pb2.TaskOptions | None = None,
    partitions: Sequence[str] = (),
) -> str:
    created = await backend.create_session(
        options or objects_pb2.TaskOptions(), partitions
    )
    return created.session_id


async def submit(
    backend: Backend,
    session_id: str,
    *tasks: NewTask,
    options: objects_pb2.TaskOptions | None = None,
) -> list[TaskRecord]:
    """Submit tasks that must all be accepted."""
    answers = await backend.submit_tasks(session_id, tasks, options)
    refused = [a for a in answers if isinstance(a, TaskRefusal)]
    assert not refused, refused
    return [a for a in answers if isinstance(a, TaskRecord)]


async def new_task(
    backend: Backend, outputs: Sequence[str], dependencies: Sequence[str] = ()
) -> NewTask:
    return NewTask(await blob(backend), outputs, dependencies)


async def take(backend: Backend, partition: str = "", agent: str = AGENT) -> Attempt:
    """Acquire and start the next task, which must exist."""
    attempt = await backend.acquire(agent, partition, LEASE)
    assert attempt is not None, f"no task queued in partition {partition!r}"
    await backend.start(attempt)
    return attempt


async def finish(
    backend: Backend, attempt: Attempt, values: dict[str, bytes] | None = None
) -> TaskRecord:
    """Send a value for each key (by default every expected output) and commit."""
    if values is None:
        values = {key: key.encode() for key in attempt.task.expected_outputs}
    for key, data in values.items():
        await backend.stage_result(attempt, key, await blob(backend, data))
    await backend.complete(attempt)
    return await backend.get_task(attempt.task.task_id)


def submit_in_process(url: str, session_id: str, key: str, report: Queue[str]) -> None:
    """A process's entry point: submit one task with output ``key`` from a backend
    of its own; report "" once it is done, or the traceback."""

    async def submit_one() -> None:
        backend = open_backend(url)
        try:
            await submit(backend, session_id, await new_task(backend, [key]))
        finally:
            await backend.close()

    try:
        asyncio.run(submit_one())
    except BaseException:
        report.put(traceback.format_exc())
    else:
        report.put("")
