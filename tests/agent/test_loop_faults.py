"""The task loop when its backend or its worker fails in ways the pods cannot show,
and how it takes tasks.

The worker link is a test double here, so that faults come exactly when wanted; the
backend is the real embedded one, wrapped to fail once where a test says.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent._config import AgentConfig
from agent._loop import TaskLoop
from agent._registry import AttemptRegistry
from agent._worker import Dispatch, TaskData
from agent.backend import (
    Attempt,
    BackendError,
    NewTask,
    SqliteBackend,
    TaskStatus,
)
from agent.backend import Backend as _Backend
from gridpod_api import objects_pb2, worker_common_pb2
from worker_sdk._server import DRAINING_DETAILS


async def _one(data: bytes) -> Any:
    yield data


class FakeWorker:
    """Answers ok after putting each expected output in the attempt's results."""

    def __init__(
        self,
        registry: AttemptRegistry,
        healthy: bool = True,
        backend: _Backend | None = None,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.healthy = healthy
        self.calls = 0
        self.crash = False
        # Turn this many tasks away as a draining worker does, then run them.
        self.turn_away = 0
        # Never finish reading a task's data ahead.
        self.stuck_reading = False

    async def wait_healthy(self, initial: timedelta, ceiling: timedelta) -> None:
        while not self.healthy:
            await asyncio.sleep(0.02)

    async def read_ahead(self, attempt: Attempt) -> TaskData:
        if self.stuck_reading:
            await asyncio.Event().wait()
        # As the real link does: the payload comes from the backend.
        assert self.backend is not None
        blob_id = attempt.task.payload.blob_id
        return TaskData(payload=[c async for c in self.backend.read_blob(blob_id)])

    async def process(
        self,
        attempt: Attempt,
        data: TaskData | None,
        timeout: float | None,
        dispatch: Dispatch | None = None,
    ) -> worker_common_pb2.ProcessReply:
        self.calls += 1
        if self.turn_away:
            self.turn_away -= 1
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                DRAINING_DETAILS,
            )
        if self.crash:
            self.healthy = False
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "the worker is gone",
            )
        running = self.registry.get(attempt.token)
        assert running is not None
        for key in attempt.task.expected_outputs:
            running.results[key] = b"r"
        output = objects_pb2.Output()
        output.ok.SetInParent()
        return worker_common_pb2.ProcessReply(output=output)


def _config(**overrides: Any) -> AgentConfig:
    settings: dict[str, Any] = {
        "backend_url": "sqlite://unused",
        "lease": timedelta(seconds=3),
        "idle_poll": timedelta(milliseconds=20),
        "grace_period": timedelta(seconds=1),
    }
    settings.update(overrides)
    return AgentConfig(**settings)


async def _submit(backend: _Backend, count: int) -> list[str]:
    session = await backend.create_session(objects_pb2.TaskOptions(max_retries=2), ())
    ids = []
    for n in range(count):
        blob = await backend.write_blob(_one(b"p"))
        [record] = await backend.submit_tasks(
            session.session_id, [NewTask(blob, [f"out{n}"])]
        )
        assert not isinstance(record, Exception)
        ids.append(record.task_id)  # type: ignore[union-attr]
    return ids


async def _statuses(backend: _Backend, ids: list[str]) -> list[TaskStatus]:
    return [(await backend.get_task(i)).status for i in ids]


async def _until(predicate: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)


@pytest.fixture
async def backend(tmp_path: Path) -> Any:
    opened = SqliteBackend(tmp_path / "state.db")
    yield opened
    await opened.close()


def _fail_once(backend: Any, method: str) -> None:
    real = getattr(backend, method)
    failed = False

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            failed = True
            raise BackendError("the state file failed: database is locked")
        return await real(*args, **kwargs)

    setattr(backend, method, flaky)


async def _run_until_all_complete(
    loop: TaskLoop, backend: _Backend, ids: list[str]
) -> None:
    runner = asyncio.create_task(loop.run())

    async def all_complete() -> bool:
        return all(s == TaskStatus.COMPLETED for s in await _statuses(backend, ids))

    try:
        await _until(all_complete)
    finally:
        loop.drain()
        await asyncio.wait_for(runner, 10)


async def test_a_failed_commit_does_not_stop_the_slot(backend: SqliteBackend) -> None:
    ids = await _submit(backend, 4)
    _fail_once(backend, "complete")
    registry = AttemptRegistry()
    loop = TaskLoop(_config(), backend, FakeWorker(registry), registry)  # type: ignore[arg-type]
    await _run_until_all_complete(loop, backend, ids)


async def test_a_failed_read_ahead_does_not_stop_acquiring(
    backend: SqliteBackend,
) -> None:
    # Tasks with a data dependency are read ahead through the backend.
    session = await backend.create_session(objects_pb2.TaskOptions(), ())
    sid = session.session_id
    blob = await backend.write_blob(_one(b"p"))
    await backend.submit_tasks(sid, [NewTask(blob, ["base"])])
    first = await backend.acquire("setup", "", timedelta(seconds=30))
    assert first is not None
    await backend.complete(first, {"base": b"s"})
    created = await backend.submit_tasks(
        sid, [NewTask(blob, [f"out{n}"], ["base"]) for n in range(3)]
    )
    ids = [c.task_id for c in created]  # type: ignore[union-attr]
    _fail_once(backend, "get_result")
    registry = AttemptRegistry()
    worker = FakeWorker(registry, backend=backend)
    loop = TaskLoop(_config(), backend, worker, registry)  # type: ignore[arg-type]
    await _run_until_all_complete(loop, backend, ids)


async def test_a_task_turned_away_by_a_draining_worker_costs_no_retry(
    backend: SqliteBackend,
) -> None:
    ids = await _submit(backend, 2)
    registry = AttemptRegistry()
    worker = FakeWorker(registry, backend=backend)
    worker.turn_away = 2
    loop = TaskLoop(_config(), backend, worker, registry)  # type: ignore[arg-type]
    await _run_until_all_complete(loop, backend, ids)

    records = [await backend.get_task(task_id) for task_id in ids]
    # Released, not failed: the same tasks completed, on their first attempt.
    assert [r.status for r in records] == [TaskStatus.COMPLETED] * 2
    assert all(r.retry_of_ids == () for r in records)
    assert worker.calls == 4


async def test_draining_with_the_worker_down_releases_what_is_held(
    backend: SqliteBackend,
) -> None:
    ids = await _submit(backend, 3)
    registry = AttemptRegistry()
    worker = FakeWorker(registry)
    worker.crash = True
    loop = TaskLoop(_config(concurrency=2), backend, worker, registry)  # type: ignore[arg-type]
    runner = asyncio.create_task(loop.run())
    await _until(lambda: _any_failed(backend, ids))
    await asyncio.sleep(0.2)
    loop.drain()
    await asyncio.wait_for(runner, 10)
    statuses = await _statuses(backend, ids)
    # Nothing stays DISPATCHED to cost a retry when its lease expires.
    assert TaskStatus.DISPATCHED not in statuses
    assert TaskStatus.SUBMITTED in statuses


async def _any_failed(backend: _Backend, ids: list[str]) -> bool:
    return TaskStatus.ERROR in await _statuses(backend, ids)


async def test_draining_before_the_worker_ever_answered_stops(
    backend: SqliteBackend,
) -> None:
    registry = AttemptRegistry()
    worker = FakeWorker(registry, healthy=False)
    loop = TaskLoop(_config(), backend, worker, registry)  # type: ignore[arg-type]
    runner = asyncio.create_task(loop.run())
    await asyncio.sleep(0.2)
    loop.drain()
    await asyncio.wait_for(runner, 3)
    assert worker.calls == 0


async def test_without_wake_ups_the_agent_still_finds_tasks(
    backend: SqliteBackend,
) -> None:
    def refuse(topics: Any = None) -> Any:
        raise BackendError("cannot listen for wake-ups: permission denied")

    backend.subscribe = refuse  # type: ignore[method-assign]
    registry = AttemptRegistry()
    loop = TaskLoop(_config(), backend, FakeWorker(registry), registry)  # type: ignore[arg-type]
    runner = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.1)  # idle, and polling
        ids = await _submit(backend, 2)

        async def all_complete() -> bool:
            statuses = await _statuses(backend, ids)
            return all(s == TaskStatus.COMPLETED for s in statuses)

        await _until(all_complete, timeout=5)
    finally:
        loop.drain()
        await asyncio.wait_for(runner, 10)


async def test_a_task_queued_by_another_process_wakes_an_idle_agent(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    # A long idle poll: only the wake-up can make the task start this soon.
    config = _config(idle_poll=timedelta(seconds=30))
    registry = AttemptRegistry()
    loop = TaskLoop(config, backend, FakeWorker(registry), registry)  # type: ignore[arg-type]
    runner = asyncio.create_task(loop.run())
    other = SqliteBackend(tmp_path / "state.db")
    try:
        await asyncio.sleep(0.2)  # the agent found the queue empty and waits
        ids = await _submit(other, 1)

        async def completed() -> bool:
            return (await _statuses(other, ids)) == [TaskStatus.COMPLETED]

        await _until(completed, timeout=5)
    finally:
        loop.drain()
        await asyncio.wait_for(runner, 10)
        await other.close()


# 1: as a backend that takes one task at a time.
@pytest.mark.parametrize(("batch", "groups"), [(64, [4, 4, 2]), (1, [1] * 10)])
async def test_tasks_are_acquired_as_many_as_there_are_slots_at_a_time(
    backend: SqliteBackend, batch: int, groups: list[int]
) -> None:
    ids = await _submit(backend, 10)
    backend.acquire_batch = batch
    registry = AttemptRegistry()
    worker = FakeWorker(registry, backend=backend)
    loop = TaskLoop(_config(concurrency=4), backend, worker, registry)  # type: ignore[arg-type]
    await _run_until_all_complete(loop, backend, ids)

    records = [await backend.get_task(task_id) for task_id in ids]
    # The tasks of one transaction share its clock reading.
    acquired = Counter(r.acquired_at for r in records)
    assert sorted(acquired.values(), reverse=True) == groups


async def test_draining_while_a_batch_is_read_ahead_releases_all_of_it(
    backend: SqliteBackend,
) -> None:
    [first] = await _submit(backend, 1)
    attempt = await backend.acquire("agent", "", timedelta(seconds=30))
    assert attempt is not None and attempt.task.task_id == first
    await backend.complete(attempt, {"out0": b"r"})
    session_id = attempt.task.session_id
    # Tasks with a data dependency are read ahead through the worker link.
    waiting = [
        NewTask(await backend.write_blob(_one(b"p")), [f"w{n}"], ["out0"])
        for n in range(4)
    ]
    records = await backend.submit_tasks(session_id, waiting)
    ids = [r.task_id for r in records]  # type: ignore[union-attr]
    registry = AttemptRegistry()
    worker = FakeWorker(registry, backend=backend)
    worker.stuck_reading = True
    loop = TaskLoop(_config(concurrency=4), backend, worker, registry)  # type: ignore[arg-type]
    runner = asyncio.create_task(loop.run())
    await _until(lambda: _all_dispatched(backend, ids))

    loop.drain()
    await asyncio.wait_for(runner, 10)

    assert await _statuses(backend, ids) == [TaskStatus.SUBMITTED] * 4


async def _all_dispatched(backend: _Backend, ids: list[str]) -> bool:
    return all(s == TaskStatus.DISPATCHED for s in await _statuses(backend, ids))


class _HandingOver(FakeWorker):
    """Writes its requests, waits, then sends its result (or not); notes how many
    acquires the backend had made by then."""

    def __init__(self, registry: AttemptRegistry, backend: Any, answers: bool) -> None:
        super().__init__(registry, backend=backend)
        self.answers = answers
        self.acquires = 0
        self.seen: list[tuple[int, int]] = []

    async def process(
        self,
        attempt: Attempt,
        data: TaskData | None,
        timeout: float | None,
        dispatch: Dispatch | None = None,
    ) -> worker_common_pb2.ProcessReply:
        assert dispatch is not None
        dispatch.sent.set_result(True)
        await asyncio.sleep(0.1)
        before = self.acquires
        running = self.registry.get(attempt.token)
        assert running is not None
        if self.answers:
            running.answered()
        await asyncio.sleep(0.1)
        self.seen.append((before, self.acquires))
        return await super().process(attempt, data, timeout, dispatch)


@pytest.mark.parametrize("answers", [True, False])
async def test_the_next_acquire_waits_until_the_task_settled(
    backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch, answers: bool
) -> None:
    # Settled: the worker's first result was accepted, or HANDOVER_WAIT passed;
    # long enough here that only the answer can settle the task in time.
    monkeypatch.setattr("agent._worker.HANDOVER_WAIT", 10 if answers else 0.05)
    ids = await _submit(backend, 3)
    registry = AttemptRegistry()
    worker = _HandingOver(registry, backend, answers)
    real = backend.acquire_many

    async def counted(*args: Any, **kwargs: Any) -> Any:
        worker.acquires += 1
        return await real(*args, **kwargs)

    backend.acquire_many = counted  # type: ignore[method-assign]
    loop = TaskLoop(_config(), backend, worker, registry)  # type: ignore[arg-type]
    await _run_until_all_complete(loop, backend, ids)

    # While the first task ran, its own acquire only, then the second task's: an
    # answer let it go at once, a silent worker after the wait.
    assert worker.seen[0] == ((1, 2) if answers else (2, 2))


async def test_a_task_settles_only_once_its_requests_are_written() -> None:
    dispatch = Dispatch.new()
    dispatch.answered()  # a result accepted while requests are still going out
    await asyncio.sleep(0)
    assert not dispatch.settled.done()
    dispatch.sent.set_result(True)
    await asyncio.sleep(0)
    assert dispatch.settled.result() is True
    # A call that ends first settles with False.
    unsent = Dispatch.new()
    unsent.ended()
    assert unsent.settled.result() is False
