"""Several acquirers on one state: each task runs once; a lapsed lease is taken over."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from datetime import timedelta

import pytest

from agent.backend import (
    Backend,
    LeaseLost,
    NewTask,
    ResultStatus,
    TaskRecord,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend import processes
from tests.backend.support import (
    LEASE,
    SharedState,
    blob,
    finish,
    new_task,
    read,
    session,
    submit,
)

PROCESSES = 3
PAIRS = 300


async def _submit_pairs(
    backend: Backend, session_id: str, count: int
) -> tuple[list[TaskRecord], list[str]]:
    """``count`` tasks and as many waiting on them; all of them and the last keys."""
    payload = await blob(backend)
    firsts = [NewTask(payload, [f"a{i}"]) for i in range(count)]
    seconds = [NewTask(payload, [f"b{i}"], [f"a{i}"]) for i in range(count)]
    tasks = await submit(backend, session_id, *firsts)
    tasks += await submit(backend, session_id, *seconds)
    return tasks, [f"b{i}" for i in range(count)]


async def _check_each_ran_once(
    backend: Backend, session_id: str, tasks: list[TaskRecord], ran: list[str]
) -> None:
    runs = Counter(ran)
    assert set(runs) == {t.task_id for t in tasks}
    assert max(runs.values()) == 1, runs.most_common(3)
    for task in tasks:
        assert (await backend.get_task(task.task_id)).status == TaskStatus.COMPLETED
        [key] = task.expected_outputs
        result = await backend.get_result(session_id, key)
        assert result.owner_task_id == task.task_id
        assert await read(backend.read_result(session_id, key)) == task.task_id.encode()


@pytest.mark.parametrize("batch", [1, 4])
async def test_concurrent_acquirers_on_one_instance_run_each_task_once(
    backend: Backend, batch: int
) -> None:
    sid = await session(backend)
    tasks, last = await _submit_pairs(backend, sid, 60)

    runs = await asyncio.gather(
        *(
            processes.run_until_done(backend, f"agent-{n}", sid, last, batch)
            for n in range(8)
        )
    )

    await _check_each_ran_once(backend, sid, tasks, [t for run in runs for t in run])
    assert sum(1 for run in runs if run) >= 2


@pytest.mark.parametrize("batch", [1, 8])
async def test_processes_sharing_the_state_run_each_task_once(
    state: SharedState, backend: Backend, batch: int
) -> None:
    sid = await session(backend)
    tasks, last = await _submit_pairs(backend, sid, PAIRS)
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(PROCESSES)
    report = spawn.Queue()
    workers = [
        spawn.Process(
            target=processes.drain,
            args=(state.url, sid, last, start, report, batch),
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        reports = [await asyncio.to_thread(report.get, timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()

    assert [error for _, error in reports if error] == []
    await _check_each_ran_once(
        backend, sid, tasks, [t for ran, _ in reports for t in ran]
    )
    assert sum(1 for ran, _ in reports if ran) >= 2
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_lapsed_lease_is_recovered_elsewhere_and_the_late_commit_refused(
    state: SharedState, retries: int
) -> None:
    first, second = state.open(), state.open()
    try:
        sid = await session(first, objects_pb2.TaskOptions(max_retries=retries))
        [task] = await submit(first, sid, await new_task(first, ["out"]))
        attempt = await first.acquire("agent-a", "", timedelta(seconds=0.2))
        assert attempt is not None
        await first.start(attempt)
        await first.stage_result(attempt, "out", await blob(first, b"late"))

        await asyncio.sleep(0.3)
        assert await second.recover_expired() == [task.task_id]

        failed = await second.get_task(task.task_id)
        assert failed.status == TaskStatus.ERROR
        assert "lease expired" in failed.status_message
        result = await second.get_result(sid, "out")
        with pytest.raises(LeaseLost):
            await first.complete(attempt)
        with pytest.raises(LeaseLost):
            await first.renew(attempt, LEASE)
        assert await second.get_task(task.task_id) == failed
        assert await second.get_result(sid, "out") == result
        assert result.status == (
            ResultStatus.CREATED if retries else ResultStatus.ABORTED
        )
        retry = await second.acquire("agent-b", "", LEASE)
        assert (retry is not None) == bool(retries)
        if retry is not None:
            assert retry.task.retry_of_ids == (task.task_id,)
            await second.start(retry)
            await finish(second, retry, {"out": b"second"})
            assert await read(first.read_result(sid, "out")) == b"second"
    finally:
        await first.close()
        await second.close()
