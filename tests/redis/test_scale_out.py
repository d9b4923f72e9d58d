"""Three pods and two control planes on one Redis: every task runs once, on one
agent, and the work is spread over the pods."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

from agent.backend import EventKind, ResultQuery, ResultStatus, TaskStatus
from tests.agent.conftest import Grid
from tests.redis.conftest import (
    LONG_LEASE,
    control_planes,
    drain,
    session_events,
    start_pods,
    statuses_by_task,
)
from worker_sdk.client import AsyncClient, TaskOptions, TaskSpec
from worker_sdk.client import TaskStatus as ClientStatus

TASKS = 60
_ACQUIRED = re.compile(r"INFO agent\._loop: task (\S+) attempt \d+ acquired ")
ONE_RUN = [TaskStatus.DISPATCHED, TaskStatus.PROCESSING, TaskStatus.COMPLETED]


def _specs(first: int, count: int) -> list[TaskSpec]:
    return [
        TaskSpec(f"0.02:task{n}".encode(), expected_outputs=[f"out{n}"])
        for n in range(first, first + count)
    ]


async def test_tasks_from_two_control_planes_run_once_over_three_pods(
    redis_grid: Grid, tmp_path: Path
) -> None:
    grid = redis_grid
    with control_planes(grid.backend_url, tmp_path, 2) as planes:
        pods = start_pods(grid, 3, *LONG_LEASE)
        async with (
            AsyncClient(planes[0].address) as first,
            AsyncClient(planes[1].address) as second,
        ):
            session = await first.create_session(TaskOptions(options={"kernel": "nap"}))
            twin = await second.open_session(session.session_id)
            half = TASKS // 2
            halves = await asyncio.gather(
                session.submit(_specs(0, half)), twin.submit(_specs(half, half))
            )
            tasks = [*halves[0], *halves[1]]
            # Each control plane follows the tasks the other one created.
            for counts in await asyncio.gather(
                session.wait(timeout=60), twin.wait(timeout=60)
            ):
                assert counts == {ClientStatus.COMPLETED: TASKS}, grid.logs()
            # Read through both control planes, whichever created the task.
            for n, task in enumerate(tasks):
                reader = session if n % 2 else twin
                assert await reader.result(task.output) == f"task{n} done".encode()

    sid = session.session_id
    records = [await grid.backend.get_task(task.task_id) for task in tasks]
    assert all(r.status == TaskStatus.COMPLETED for r in records)
    assert all(r.retry_of_ids == () for r in records)
    owners = Counter(r.owner_agent_id for r in records)
    assert len(owners) > 1, owners
    assert set(owners) <= {pod.name for pod in pods}

    results = await grid.backend.list_results(ResultQuery(session_ids=[sid]))
    assert sorted(r.key for r in results.items) == sorted(
        f"out{n}" for n in range(TASKS)
    )
    assert all(r.status == ResultStatus.COMPLETED for r in results.items)
    assert {r.key: r.owner_task_id for r in results.items} == {
        task.output: task.task_id for task in tasks
    }

    # One acquisition per task: no task ran on two agents, nor twice on one.
    events = await session_events(grid.backend, sid)
    created = [e.task_id for e in events if e.kind == EventKind.NEW_TASK]
    assert sorted(created) == sorted(task.task_id for task in tasks)
    changes = statuses_by_task(events)
    assert {task.task_id: changes[task.task_id] for task in tasks} == {
        task.task_id: ONE_RUN for task in tasks
    }

    # The agents' own account agrees: each task was acquired by one of them.
    drain(pods)
    acquired = Counter(
        task_id
        for pod in pods
        for task_id in _ACQUIRED.findall((pod.folder / "agent.log").read_text())
    )
    assert acquired == Counter(task.task_id for task in tasks)
