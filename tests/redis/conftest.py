"""Grids of real processes on one Redis: pods, control planes and the tests' own
backend instance, which submits tasks and reads what happened."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.backend import Backend, Event, EventKind, TaskStatus, open_backend
from tests.agent.conftest import Grid, Pod
from tests.control.conftest import ControlPlaneProcess, spawn_control_plane

FLEET = "tests.redis.handlers:Fleet"
# For tests that lose no lease on purpose: ``Pod``'s lease of 1 s could lapse on
# a loaded machine, and the task would then be retried.
LONG_LEASE = ("--lease", "10")


@contextlib.asynccontextmanager
async def grid_on(backend_url: str, folder: Path) -> AsyncIterator[Grid]:
    """A grid whose workers serve ``Fleet``; its pods are killed at the end."""
    backend = open_backend(backend_url)
    grid = Grid(folder, backend, backend_url, handler=FLEET)
    try:
        yield grid
    finally:
        for pod in grid.pods:
            pod.stop()
        await backend.close()


@pytest.fixture
async def redis_grid(redis_url: str, tmp_path: Path) -> AsyncIterator[Grid]:
    async with grid_on(redis_url, tmp_path) as grid:
        yield grid


def start_pods(grid: Grid, count: int, *agent_args: str) -> list[Pod]:
    """``count`` pods, started side by side, once every one is ready."""
    pods = [grid.pod(*agent_args, start=False) for _ in range(count)]
    for pod in pods:
        pod.start_worker()
        pod.start_agent()
    for pod in pods:
        pod.wait_ready()
    return pods


def drain(pods: list[Pod]) -> None:
    """SIGTERM every pod's agent at once; each must exit 0."""
    agents = {pod.name: pod.agent for pod in pods if pod.agent is not None}
    for agent in agents.values():
        agent.send_signal(signal.SIGTERM)
    for pod in pods:
        assert agents[pod.name].wait(timeout=30) == 0, pod.logs()


def pod_named(grid: Grid, agent_id: str) -> Pod:
    [pod] = [pod for pod in grid.pods if pod.name == agent_id]
    return pod


@contextlib.contextmanager
def control_planes(
    backend_url: str, folder: Path, count: int
) -> Iterator[list[ControlPlaneProcess]]:
    """``count`` ``agent control-plane`` processes, started side by side, each
    with a folder of its own for its log; killed at the end."""
    folders = [folder / f"control{n}" for n in range(count)]
    for each in folders:
        each.mkdir()
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(spawn_control_plane, backend_url, f) for f in folders]
    planes = [f.result() for f in futures if f.exception() is None]
    try:
        for future in futures:
            future.result()  # raises the first failure to start
        yield planes
    finally:
        for plane in planes:
            if plane.process.poll() is None:
                plane.process.kill()
                plane.process.wait(timeout=10)


async def session_events(backend: Backend, session_id: str) -> list[Event]:
    """Every event of the session, oldest first."""
    events: list[Event] = []
    while batch := await backend.read_events(
        events[-1].seq if events else 0, session_id=session_id
    ):
        events += batch
    return events


def statuses_by_task(events: list[Event]) -> dict[str, list[TaskStatus]]:
    """The status changes of each task, in the order they were committed."""
    changes: dict[str, list[TaskStatus]] = {}
    for event in events:
        if event.kind == EventKind.TASK_STATUS and event.status is not None:
            changes.setdefault(event.task_id, []).append(event.status)
    return changes


async def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout}s")
        await asyncio.sleep(0.02)
