"""What only the Redis backend has: its URL, its event retention, replayed calls,
and a server that lost its functions."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from agent.backend import (
    BackendError,
    EventsExpired,
    NewTask,
    TaskQuery,
    TaskRecord,
    TaskStatus,
    open_backend,
)
from agent.backend._redis import RedisBackend, _backend, _keys
from tests.backend.support import blob, finish, new_task, session, submit, take
from tests.redis_server import RedisServer

KEPT = 10


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    opened = open_backend(redis_url)
    assert isinstance(opened, RedisBackend)
    yield opened
    await opened.close()


async def test_the_oldest_events_are_dropped_and_reading_them_refused(
    redis_url: str,
) -> None:
    backend = open_backend(f"{redis_url}&events={KEPT}")
    try:
        sid = await session(backend)
        for number in range(150):
            await submit(backend, sid, await new_task(backend, [f"o{number}"]))
        last = await backend.last_event(sid)
        assert last == 300

        # Redis trims whole nodes of its stream: at least KEPT are kept.
        recent = await backend.read_events(last - KEPT, session_id=sid)
        assert [e.seq for e in recent] == list(range(last - KEPT + 1, last + 1))
        with pytest.raises(EventsExpired):
            await backend.read_events(0, session_id=sid)
        assert await backend.read_events(last, session_id=sid) == []
    finally:
        await backend.close()


async def test_events_are_read_by_session_only(backend: RedisBackend) -> None:
    with pytest.raises(BackendError, match="by session"):
        await backend.read_events(0)
    with pytest.raises(BackendError, match="session"):
        await backend.last_event()


@pytest.mark.parametrize(
    "query", ["events=many", "events=0", "reconnect=soon", "reconnect=-1"]
)
def test_a_bad_retention_is_refused(redis_url: str, query: str) -> None:
    with pytest.raises(ValueError, match=query.partition("=")[0]):
        open_backend(f"{redis_url}&{query}")


async def test_a_call_sent_again_replies_as_the_first_did(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that broke after Redis ran a call makes the client send it
    again with the same nonce: the tasks are created once."""
    sid = await session(backend)
    task = NewTask(await blob(backend), ["out"])
    monkeypatch.setattr(_backend, "nonce", lambda: "0123456789abcdef0123")
    [first] = await submit(backend, sid, task)
    # A second call would refuse the task: its output exists by then.
    [again] = await submit(backend, sid, task)
    monkeypatch.undo()

    assert isinstance(again, TaskRecord)
    assert again.task_id == first.task_id
    counts = await backend.count_tasks(TaskQuery(session_ids=[sid]))
    assert counts == {TaskStatus.SUBMITTED: 1}


async def test_functions_are_loaded_again_when_the_server_lost_them(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    sid = await session(backend)
    client = redis.asyncio.Redis(port=redis_server.port)
    try:
        await client.function_flush()
    finally:
        await client.aclose()
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    assert (await finish(backend, attempt)).status == TaskStatus.COMPLETED


def test_ids_of_a_session_share_its_hash_tag() -> None:
    session_id = _keys.fresh_id()
    task_id = _keys.fresh_id(_keys.tag_of(session_id))
    keys = _keys.Keys("gp")
    assert keys.task(task_id).startswith(keys.base(session_id))
    assert keys.result(session_id, "out").startswith(keys.base(session_id))
    assert len(task_id) == len(session_id) == 36


def _self_signed(folder: Path) -> tuple[Path, Path]:
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
            *("-keyout", str(key), "-out", str(certificate), "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return certificate, key


async def test_rediss_runs_a_task_over_tls(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", tls=_self_signed(tmp_path)) as server:
        backend = open_backend(server.url())
        try:
            sid = await session(backend)
            await submit(backend, sid, await new_task(backend, ["out"]))
            attempt = await take(backend)
            assert (await finish(backend, attempt)).status == TaskStatus.COMPLETED
        finally:
            await backend.close()

        plain = open_backend(f"redis://127.0.0.1:{server.port}/0?reconnect=0")
        try:
            with pytest.raises(BackendError):
                await plain.get_session(sid)
        finally:
            await plain.close()
