"""A control plane for the client's tests, and an agent's hands to run its tasks.

``PlaneThread`` serves a real ``ControlPlane`` over a fresh SQLite file on a unix
socket, from an event loop of its own in a thread: blocking clients and asyncio
clients alike can call it from the test's thread. The test runs the queued tasks
itself through the backend's agent-side calls, as an agent would.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from agent.backend import Attempt, SqliteBackend, TaskRecord
from agent.control._config import ControlPlaneConfig
from agent.control._server import ControlPlane
from worker_sdk import Address

T = TypeVar("T")
# What a test kernel makes of a task and its payload: its results, or the error it
# fails with.
Outcome = Mapping[str, bytes] | str
Kernel = Callable[[TaskRecord, bytes], Outcome]

AGENT_ID = "test-agent"
# Small, so that even small payloads and results travel as several chunks.
CHUNK_SIZE = 64 * 1024


def echo(task: TaskRecord, payload: bytes) -> Outcome:
    """Every expected output holds the payload."""
    return {key: payload for key in task.expected_outputs}


def failing(task: TaskRecord, payload: bytes) -> Outcome:
    return f"kernel failed on {task.task_id}"


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A fresh directory with a short path: unix socket paths stop at 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="gridpod-client-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class PlaneThread:
    """A control plane and its backend, served from a thread of their own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.database = folder / "state.db"
        self.address = f"unix://{folder / 'control.sock'}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.backend: SqliteBackend = self.run(self._open_backend())
        self._plane = ControlPlane(
            self.backend,
            ControlPlaneConfig(data_chunk_max_size=CHUNK_SIZE),
            Address.parse(self.address),
        )
        self.run(self._plane.start())

    async def _open_backend(self) -> SqliteBackend:
        return SqliteBackend(self.database)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the plane's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def arun(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the plane's loop; awaitable from another loop."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return await asyncio.wrap_future(future)

    def work(self, kernel: Kernel = echo) -> list[TaskRecord]:
        """Run every queued task to its end; the records of the tasks run."""
        return self.run(self._work(kernel))

    async def awork(self, kernel: Kernel = echo) -> list[TaskRecord]:
        return await self.arun(self._work(kernel))

    async def _work(self, kernel: Kernel) -> list[TaskRecord]:
        ended = []
        while attempt := await self._acquire():
            await self.backend.start(attempt)
            blob = self.backend.read_blob(attempt.task.payload.blob_id)
            payload = b"".join([chunk async for chunk in blob])
            outcome = kernel(attempt.task, payload)
            if isinstance(outcome, str):
                ended.append(await self.backend.fail(attempt, outcome))
            else:
                await self.backend.complete(attempt, outcome)
                ended.append(await self.backend.get_task(attempt.task.task_id))
        return ended

    async def _acquire(self) -> Attempt | None:
        # Payloads are read from their blobs, so that any size arrives whole.
        return await self.backend.acquire(AGENT_ID, "", timedelta(minutes=5))

    def close(self) -> None:
        self.run(self._plane.stop(0))
        self.run(self.backend.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextmanager
def silent_listener() -> Iterator[str]:
    """``host:port`` of a socket that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host, port = listener.getsockname()
        yield f"{host}:{port}"


def unused_address() -> str:
    """``host:port`` where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()
    return f"{host}:{port}"
