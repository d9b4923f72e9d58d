"""What the fuzz tests share: a server's event loop on a thread, message sequences
with their mutations, and a look at the SQLite file the backend interface hides.

A module serves one server for all its examples, on an event loop of its own
thread; the examples are plain functions that call it with a blocking gRPC channel
and run set-up coroutines on that loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from agent.backend import Backend, open_backend
from agent.control import ControlPlane, ControlPlaneConfig
from gridpod_api import objects_pb2
from worker_sdk import Address
from worker_sdk._agent import CHANNEL_OPTIONS

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)

# Every example of every fuzz test, times this: raise it for a longer hunt, as in
# GRIDPOD_FUZZ_SCALE=50 pytest tests/fuzz.
_SCALE = int(os.environ.get("GRIDPOD_FUZZ_SCALE", "1"))

# What a refused stream may be answered with; never UNKNOWN nor INTERNAL.
CLEAR_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

# Raw bytes sent as one message: most do not parse, a few parse to something.
Raw = bytes
Sent = Message | Raw


def examples(count: int) -> settings:
    """Settings for a fuzz test of ``count`` examples (times the scale)."""
    return settings(
        max_examples=count * _SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def encoded(message: Sent) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def parsed(message: Sent, kind: type[_M]) -> _M | None:
    """The message the server reads, or None for bytes that do not parse."""
    if not isinstance(message, bytes):
        assert isinstance(message, kind)
        return message
    try:
        return kind.FromString(message)
    except DecodeError:
        return None


def raw_bytes() -> st.SearchStrategy[Raw]:
    return st.binary(min_size=1, max_size=24)


@st.composite
def _mutated(
    draw: st.DrawFn,
    valid: st.SearchStrategy[list[_T]],
    vocabulary: st.SearchStrategy[_T],
) -> list[_T]:
    messages = list(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(messages)))
        change = draw(st.sampled_from(["drop", "repeat", "insert", "cut", "swap"]))
        if change == "insert" or not messages:
            messages.insert(at, draw(vocabulary))
            continue
        at = min(at, len(messages) - 1)
        if change == "drop":
            del messages[at]
        elif change == "repeat":
            messages.insert(at, messages[at])
        elif change == "cut":
            del messages[at:]
        else:
            other = draw(st.integers(0, len(messages) - 1))
            messages[at], messages[other] = messages[other], messages[at]
    return messages


def streams(
    valid: st.SearchStrategy[list[_T]], vocabulary: st.SearchStrategy[_T]
) -> st.SearchStrategy[list[_T]]:
    """Streams that follow the grammar, the same with a few messages dropped,
    repeated, inserted, moved or cut off, and any messages in any order."""
    return st.one_of(
        valid,
        _mutated(valid, vocabulary),
        st.lists(vocabulary, max_size=10),
    )


def data_sizes(*sizes: int) -> st.SearchStrategy[bytes]:
    """Chunks of these sizes, cheap to make whatever the size."""
    return st.builds(
        lambda size, fill: bytes([fill]) * size,
        st.sampled_from(sizes),
        st.integers(0, 255),
    )


class ServerLoop:
    """An event loop on a thread of its own, where a module's server runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fuzzed-server", daemon=True
        )
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, _T], timeout: float = 60) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def call(self, function: Callable[[], _T]) -> _T:
        """``function()`` on the loop's thread, for state its coroutines change."""

        async def called() -> _T:
            return function()

        return self.run(called())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


@contextmanager
def server_loop() -> Iterator[ServerLoop]:
    served = ServerLoop()
    try:
        yield served
    finally:
        served.close()


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A fresh directory with a short path: unix socket paths stop at 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="gridpod-fuzz-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def call_status(call: Callable[[], _T]) -> tuple[grpc.StatusCode, _T | None, str]:
    """The status of a blocking call, its reply when OK, and the details."""
    try:
        return grpc.StatusCode.OK, call(), ""
    except grpc.RpcError as error:
        return error.code(), None, error.details() or ""


@dataclass
class Plane:
    """A control plane serving on a unix socket, over a SQLite file."""

    loop: ServerLoop
    backend: Backend
    channel: grpc.Channel
    state: StateFile
    # A session that takes no tasks any more.
    cancelled: str


@contextmanager
def serving_control_plane(config: ControlPlaneConfig) -> Iterator[Plane]:
    with short_tempdir() as folder, server_loop() as loop:
        path = folder / "state.db"
        backend = loop.call(lambda: open_backend(f"sqlite://{path}"))
        address = Address("unix", str(folder / "control.sock"))
        served = loop.call(lambda: ControlPlane(backend, config, address))
        loop.run(served.start())
        channel = grpc.insecure_channel(address.grpc_target, options=CHANNEL_OPTIONS)
        state = StateFile(path)

        async def cancelled() -> str:
            session = await backend.create_session(objects_pb2.TaskOptions(), [])
            await backend.cancel_session(session.session_id)
            return session.session_id

        try:
            yield Plane(loop, backend, channel, state, loop.run(cancelled()))
        finally:
            state.close()
            channel.close()
            loop.run(served.stop(0))
            loop.run(backend.close())


# -- what the SQLite file holds ------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """Counts of what the backend stored, and the blobs that nothing uses."""

    tasks: int
    results: int
    staged_results: int
    blobs: int
    unreferenced_blobs: tuple[str, ...]
    unfinished_blobs: int


_UNREFERENCED = """
SELECT blob_id FROM blobs AS b
WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE payload_blob = b.blob_id)
    AND NOT EXISTS (SELECT 1 FROM results WHERE blob_id = b.blob_id)
    AND NOT EXISTS (SELECT 1 FROM staged_results WHERE blob_id = b.blob_id)
    AND NOT EXISTS (SELECT 1 FROM resources WHERE blob_id = b.blob_id)"""


class StateFile:
    """Reads a SQLite backend's file from the test's own connection."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def close(self) -> None:
        self._db.close()

    def _count(self, table: str) -> int:
        (count,) = self._db.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(count)

    def stored(self) -> Stored:
        unreferenced = [row[0] for row in self._db.execute(_UNREFERENCED)]
        (unfinished,) = self._db.execute(
            "SELECT count(*) FROM blobs WHERE size IS NULL"
        ).fetchone()
        return Stored(
            tasks=self._count("tasks"),
            results=self._count("results"),
            staged_results=self._count("staged_results"),
            blobs=self._count("blobs"),
            unreferenced_blobs=tuple(unreferenced),
            unfinished_blobs=int(unfinished),
        )

    def staged_values(self, task_id: str) -> dict[str, bytes]:
        """The results an attempt of ``task_id`` staged, with their data."""
        values = {}
        rows = self._db.execute(
            "SELECT key, blob_id FROM staged_results WHERE task_id = ?", (task_id,)
        ).fetchall()
        for key, blob_id in rows:
            chunks = self._db.execute(
                "SELECT data FROM blob_chunks WHERE blob_id = ? ORDER BY seq",
                (blob_id,),
            ).fetchall()
            values[key] = b"".join(data for (data,) in chunks)
        return values

    def tasks_staged_by(self, task_id: str) -> int:
        (count,) = self._db.execute(
            "SELECT count(*) FROM tasks WHERE staged_by = ?", (task_id,)
        ).fetchone()
        return int(count)


def assert_nothing_left_over(stored: Stored) -> None:
    assert not stored.unreferenced_blobs, (
        f"blobs that nothing references: {stored.unreferenced_blobs}"
    )
    assert stored.unfinished_blobs == 0, "a blob was left half written"
