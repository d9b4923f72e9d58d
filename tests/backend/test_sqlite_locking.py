"""The embedded backend while another process holds the state file's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
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
