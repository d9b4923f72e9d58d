"""The embedded backend while another process holds the state file's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

from agent.backend import SqliteBackend, TaskStatus
from tests.backend.support import LEASE, new_task, session, submit, take


async def test_a_transition_waits_for_the_lock_without_stalling_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    backend = SqliteBackend(path)
    try:
        sid = await session(backend)
        [task] = await submit(backend, sid, await new_task(backend, ["out"]))
        attempt = await take(backend)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        renewal = asyncio.create_task(backend.renew(attempt, LEASE))
        await asyncio.sleep(0.1)
        # Queued behind the waiting renewal: queueing it must not wait as well.
        listing = asyncio.create_task(backend.list_resources())
        await asyncio.sleep(0.2)
        assert not renewal.done()  # waiting for the lock, on the backend's thread
        other.execute("COMMIT")
        renewed = await renewal
        assert await listing == {}
        waited = time.monotonic() - started
        ticker.cancel()
        other.close()
        assert renewed.lease_expires_at > attempt.lease_expires_at
        # The loop kept turning while the transition waited.
        assert ticks >= 10, (ticks, waited)
        await backend.complete(renewed, {"out": b"done"})
        assert (await backend.get_task(task.task_id)).status == TaskStatus.COMPLETED
    finally:
        await backend.close()


async def test_the_loop_does_not_wait_for_the_lock_after_a_call_that_did(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    backend = SqliteBackend(path, busy_timeout=timedelta(seconds=5))
    try:
        sid = await session(backend)
        await submit(backend, sid, await new_task(backend, ["out"]))
        attempt = await take(backend)
        # A call on the backend's thread, which waits for the lock when it must;
        # then time for the thread to let go of the connection, so that the
        # renewal below is tried on the loop first.
        assert await backend.list_resources() == {}
        await asyncio.sleep(0.1)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        renewal = asyncio.create_task(backend.renew(attempt, LEASE))
        await asyncio.sleep(0.05)
        # Had the try on the loop waited out the busy timeout, the loop would have
        # stalled for those 5 seconds.
        assert time.monotonic() - started < 2
        assert not renewal.done()
        other.execute("COMMIT")
        other.close()
        renewed = await renewal
        assert renewed.lease_expires_at >= attempt.lease_expires_at
    finally:
        await backend.close()
