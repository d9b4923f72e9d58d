"""Redis killed and started again (with its append-only file) while tasks stream
in and run: the agents and the control plane carry on, and nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

from agent.backend import ResultQuery, ResultStatus, TaskQuery, TaskStatus
from tests.agent.conftest import Grid
from tests.redis.conftest import (
    LONG_LEASE,
    control_planes,
    grid_on,
    session_events,
    start_pods,
    statuses_by_task,
    wait_for,
)
from tests.redis_server import RedisServer
from worker_sdk.client import (
    AsyncClient,
    AsyncSession,
    SubmittedTask,
    TaskOptions,
    TaskSpec,
)
from worker_sdk.client import TaskStatus as ClientStatus

TASKS = 100
BATCH = 5
ONE_RUN = [TaskStatus.DISPATCHED, TaskStatus.PROCESSING, TaskStatus.COMPLETED]


async def _stream(session: AsyncSession, acknowledged: list[SubmittedTask]) -> None:
    """Submit the tasks a few at a time, as a client producing work would."""
    for first in range(0, TASKS, BATCH):
        specs = [
            TaskSpec(f"0.03:task{n}".encode(), expected_outputs=[f"out{n}"])
            for n in range(first, first + BATCH)
        ]
        acknowledged += await session.submit(specs)
        await asyncio.sleep(0.03)


async def _values(grid: Grid, session_id: str) -> dict[str, bytes]:
    """Every completed result of the session, with its data."""
    page = await grid.backend.list_results(
        ResultQuery(session_ids=[session_id], statuses=[ResultStatus.COMPLETED])
    )
    values = {}
    for result in page.items:
        chunks = grid.backend.read_result(session_id, result.key)
        values[result.key] = b"".join([chunk async for chunk in chunks])
    return values


async def _until_completed(grid: Grid, session_id: str, count: int) -> None:
    query = TaskQuery(session_ids=[session_id])
    deadline = time.monotonic() + 60
    while (await grid.backend.count_tasks(query)).get(TaskStatus.COMPLETED, 0) < count:
        assert time.monotonic() < deadline, grid.logs()
        await asyncio.sleep(0.02)


async def test_a_redis_restart_mid_run_loses_no_task_and_no_result(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", append_only=True)
    server.start()
    try:
        async with grid_on(server.url(), tmp_path) as grid:
            with control_planes(server.url(), tmp_path, 1) as [plane]:
                # A lease longer than the outage: no task is lost to it.
                start_pods(grid, 2, *LONG_LEASE)
                async with AsyncClient(plane.address) as client:
                    await _crash_mid_run(server, grid, client)
    finally:
        server.stop()


async def _crash_mid_run(server: RedisServer, grid: Grid, client: AsyncClient) -> None:
    session = await client.create_session(TaskOptions(options={"kernel": "nap"}))
    sid = session.session_id
    acknowledged: list[SubmittedTask] = []
    stream = asyncio.create_task(_stream(session, acknowledged))
    await wait_for(lambda: len(acknowledged) >= 40, timeout=60)
    await _until_completed(grid, sid, 10)
    completed = await _values(grid, sid)
    before = list(acknowledged)
    # Waits of the control plane that span the outage.
    waits = asyncio.gather(
        session.wait([task.task_id for task in before], timeout=60),
        session.wait_for_results([task.output for task in before], timeout=60),
    )
    await asyncio.sleep(0.1)  # for both to reach the control plane
    server.kill()
    await asyncio.sleep(1)
    server.start()

    counts, settled = await waits
    assert _names(counts) == {"COMPLETED": len(before)}
    assert {status.name for status in settled.values()} == {"COMPLETED"}
    await asyncio.wait_for(stream, 60)
    assert _names(await session.wait(timeout=60)) == {"COMPLETED": TASKS}
    assert len(acknowledged) == TASKS
    for task in before:
        record = await grid.backend.get_task(task.task_id)
        assert record.status == TaskStatus.COMPLETED
    values = await _values(grid, sid)
    assert values == {f"out{n}": f"task{n} done".encode() for n in range(TASKS)}
    assert completed.items() <= values.items()
    # Calls sent again after the restart did not run twice: one acquisition each.
    changes = statuses_by_task(await session_events(grid.backend, sid))
    assert {t.task_id: changes[t.task_id] for t in acknowledged} == {
        t.task_id: ONE_RUN for t in acknowledged
    }


def _names(counts: Mapping[ClientStatus, int]) -> dict[str, int]:
    return {status.name: count for status, count in counts.items()}
