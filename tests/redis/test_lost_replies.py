"""Replies that Redis sent but the backend never got: the connection broke after
the server ran the command, and the client sends the command again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from agent.backend import (
    Backend,
    EventKind,
    NewTask,
    TaskRecord,
    TaskStatus,
    open_backend,
)
from gridpod_api import objects_pb2
from tests.redis.conftest import session_events, statuses_by_task
from tests.redis_server import RedisServer


class ReplyCutter:
    """A TCP proxy to Redis. Armed with a word of a command (its name, or the
    function it calls), it passes the command on and, instead of its reply,
    closes the client's connection: the write is made, and its reply lost."""

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self._armed = b""
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def arm(self, word: str) -> None:
        self._armed = word.encode()

    async def close(self) -> None:
        self._server.close()
        # Aborted rather than cancelled: each link then ends as a broken one does.
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _accept(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        link = asyncio.current_task()
        assert link is not None
        self._links.add(link)
        server, to_server = await asyncio.open_connection("127.0.0.1", self._redis_port)
        self._writers |= {to_client, to_server}
        sent = asyncio.Event()
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(
                self._forward(client, to_server, sent),
                self._reply(server, to_client, sent),
            )
        for writer in (to_client, to_server):
            writer.transport.abort()
            self._writers.discard(writer)
        self._links.discard(link)

    async def _forward(
        self,
        client: asyncio.StreamReader,
        to_server: asyncio.StreamWriter,
        sent: asyncio.Event,
    ) -> None:
        # The tail of the last read: a word may straddle two reads.
        tail = b""
        while data := await client.read(1 << 16):
            if self._armed and self._armed in tail + data:
                self._armed = b""
                sent.set()
            tail = data[-64:]
            to_server.write(data)
            await to_server.drain()
        to_server.transport.abort()

    async def _reply(
        self,
        server: asyncio.StreamReader,
        to_client: asyncio.StreamWriter,
        sent: asyncio.Event,
    ) -> None:
        while data := await server.read(1 << 16):
            if sent.is_set():
                self.cuts += 1
                break
            to_client.write(data)
            await to_client.drain()
        to_client.transport.abort()


@pytest.fixture
async def cutter(redis_server: RedisServer) -> AsyncIterator[ReplyCutter]:
    proxy = ReplyCutter(redis_server.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def backend(
    redis_server: RedisServer, redis_url: str, cutter: ReplyCutter
) -> AsyncIterator[Backend]:
    """The test's own keys, reached through the proxy."""
    opened = open_backend(
        redis_url.replace(f":{redis_server.port}/", f":{cutter.port}/")
    )
    yield opened
    with contextlib.suppress(Exception):
        await opened.close()


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_a_transition_whose_reply_was_lost_is_not_made_twice(
    backend: Backend, cutter: ReplyCutter
) -> None:
    session = await backend.create_session(objects_pb2.TaskOptions(), [""])
    sid = session.session_id
    payload = await backend.write_blob(_chunks(b"payload"), session_id=sid)
    cutter.arm("gp_submit")
    [task] = await backend.submit_tasks(sid, [NewTask(payload, ["out"])])
    assert isinstance(task, TaskRecord), task
    cutter.arm("gp_acquire")
    attempt = await backend.acquire("agent", "", timedelta(seconds=30))
    assert attempt is not None
    await backend.start(attempt)
    cutter.arm("gp_complete")
    await backend.complete(attempt, {"out": b"value"})
    assert cutter.cuts == 3
    record = await backend.get_task(task.task_id)

    assert record.status == TaskStatus.COMPLETED
    assert attempt.task.task_id == record.task_id == task.task_id
    events = await session_events(backend, sid)
    assert [e.task_id for e in events if e.kind == EventKind.NEW_TASK] == [
        record.task_id
    ]
    assert statuses_by_task(events)[record.task_id] == [
        TaskStatus.DISPATCHED,
        TaskStatus.PROCESSING,
        TaskStatus.COMPLETED,
    ]
    assert b"".join([c async for c in backend.read_result(sid, "out")]) == b"value"


async def test_a_blob_whose_write_reply_was_lost_reads_back_as_written(
    backend: Backend, cutter: ReplyCutter
) -> None:
    chunks = [bytes([n]) * 1000 for n in range(3)]
    cutter.arm("gp_append")
    blob = await backend.write_blob(_chunks(*chunks))
    assert cutter.cuts == 1
    assert blob.size == 3000
    stored = b"".join([c async for c in backend.read_blob(blob.blob_id)])
    assert len(stored) == blob.size
    assert stored == b"".join(chunks)
