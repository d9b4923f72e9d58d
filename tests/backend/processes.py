"""An agent's loop, run by tasks of one process or by separate processes."""

from __future__ import annotations

import asyncio
import os
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from agent.backend import Attempt, Backend, ResultStatus, open_backend
from tests.backend.support import LEASE, chunks


async def _all_completed(backend: Backend, session_id: str, keys: list[str]) -> bool:
    for key in keys:
        result = await backend.get_result(session_id, key)
        if result.status != ResultStatus.COMPLETED:
            return False
    return True


async def _take(backend: Backend, agent_id: str, batch: int) -> list[Attempt]:
    if batch == 1:
        attempt = await backend.acquire(agent_id, "", LEASE)
        return [] if attempt is None else [attempt]
    return await backend.acquire_many(agent_id, "", LEASE, batch)


async def run_until_done(
    backend: Backend,
    agent_id: str,
    session_id: str,
    last_keys: list[str],
    batch: int = 1,
) -> list[str]:
    """Run every task it gets, ``batch`` acquired at a time, until ``last_keys``
    are completed; the ids it ran.

    Each output's value is the id of the task that produced it.
    """
    ran: list[str] = []
    while True:
        attempts = await _take(backend, agent_id, batch)
        if not attempts:
            if await _all_completed(backend, session_id, last_keys):
                return ran
            await asyncio.sleep(0.005)
            continue
        for attempt in attempts:
            await backend.start(attempt)
            for key in attempt.task.expected_outputs:
                data = await backend.write_blob(chunks(attempt.task.task_id.encode()))
                await backend.stage_result(attempt, key, data)
            await backend.complete(attempt)
            ran.append(attempt.task.task_id)


async def _drain(
    url: str, session_id: str, last_keys: list[str], batch: int
) -> list[str]:
    backend = open_backend(url)
    try:
        agent_id = f"agent-{os.getpid()}"
        return await run_until_done(backend, agent_id, session_id, last_keys, batch)
    finally:
        await backend.close()


def drain(
    url: str,
    session_id: str,
    last_keys: list[str],
    start: Barrier,
    report: Queue[tuple[list[str], str]],
    batch: int = 1,
) -> None:
    """A process's entry point: reports the ids it ran, or its traceback."""
    start.wait()
    try:
        report.put((asyncio.run(_drain(url, session_id, last_keys, batch)), ""))
    except BaseException:
        report.put(([], traceback.format_exc()))
