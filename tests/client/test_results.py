"""Waiting for tasks and reading their results from a real control plane."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from agent.backend import TaskRecord
from tests.client.support import (
    AGENT_ID,
    Kernel,
    Outcome,
    PlaneThread,
    echo,
    failing,
)
from worker_sdk.client import (
    AsyncClient,
    AsyncSession,
    NotFoundError,
    ResultAborted,
    ResultNotReady,
    ResultStatus,
    TaskSpec,
    TaskStatus,
    WaitTimeout,
)


def _fail_on(marker: bytes) -> Kernel:
    def kernel(task: TaskRecord, payload: bytes) -> Outcome:
        return failing(task, payload) if payload == marker else echo(task, payload)

    return kernel


async def test_a_result_not_completed_yet_names_its_task(
    session: AsyncSession,
) -> None:
    [task] = await session.submit([TaskSpec(b"x")])
    with pytest.raises(ResultNotReady, match=task.task_id) as caught:
        await session.result(task.output)
    assert (caught.value.key, caught.value.task_id) == (task.output, task.task_id)


async def test_the_result_of_a_failed_task_carries_its_error(
    plane: PlaneThread, session: AsyncSession
) -> None:
    [task] = await session.submit([TaskSpec(b"x")])
    await plane.awork(failing)
    with pytest.raises(ResultAborted) as caught:
        await session.result(task.output)
    error = caught.value
    assert error.task_id == task.task_id
    assert f"kernel failed on {task.task_id}" in str(error)
    details = await session.get_task(task.task_id)
    assert (details.status, details.owner_pod_id) == (TaskStatus.ERROR, AGENT_ID)
    assert f"kernel failed on {task.task_id}" in details.error
    [listed] = await session.list_tasks(TaskStatus.ERROR)
    assert (listed.task_id, listed.error) == (task.task_id, details.error)


async def test_a_result_never_leaves_part_of_a_file_behind(
    plane: PlaneThread, session: AsyncSession, tmp_path: Path
) -> None:
    done, failed = await session.submit([TaskSpec(b"data"), TaskSpec(b"doomed")])
    await plane.awork(_fail_on(b"doomed"))
    target = tmp_path / "out.bin"
    with pytest.raises(ResultAborted):
        await session.result_to(failed.output, target)
    assert list(tmp_path.iterdir()) == []
    assert await session.result_to(done.output, target) == 4
    assert target.read_bytes() == b"data"
    assert list(tmp_path.iterdir()) == [target]


async def test_wait_stops_at_the_first_error_when_asked(
    plane: PlaneThread, session: AsyncSession
) -> None:
    [doomed] = await session.submit([TaskSpec(b"doomed")])
    await plane.awork(failing)
    await session.submit([TaskSpec(b"queued")])
    counts = await session.wait(stop_on_error=True, timeout=10)
    assert counts == {TaskStatus.ERROR: 1, TaskStatus.SUBMITTED: 1}
    with pytest.raises(WaitTimeout, match=r"not all final after 0\.2s"):
        await session.wait(timeout=0.2)
    assert await session.wait([doomed.task_id]) == {TaskStatus.ERROR: 1}


async def test_wait_counts_the_tasks_by_status_once_all_are_final(
    plane: PlaneThread, session: AsyncSession
) -> None:
    tasks = await session.submit([TaskSpec(b"a"), TaskSpec(b"b"), TaskSpec(b"c")])
    await session.cancel_tasks([tasks[2].task_id])
    assert await session.count_tasks() == {
        TaskStatus.SUBMITTED: 2,
        TaskStatus.CANCELLED: 1,
    }
    waiting = asyncio.create_task(session.wait())
    await plane.awork(_fail_on(b"b"))
    counts = await asyncio.wait_for(waiting, 10)
    assert counts == {
        TaskStatus.COMPLETED: 1,
        TaskStatus.ERROR: 1,
        TaskStatus.CANCELLED: 1,
    }
    statuses = await session.result_status([t.output for t in tasks])
    assert list(statuses.values()) == [
        ResultStatus.COMPLETED,
        ResultStatus.ABORTED,
        ResultStatus.ABORTED,
    ]


async def test_a_watch_sees_the_current_status_then_the_completion(
    plane: PlaneThread, session: AsyncSession
) -> None:
    [task] = await session.submit([TaskSpec(b"x")])
    seen = []
    async with contextlib.aclosing(session.watch([task.output, "ghost"])) as watch:
        async for key, status in watch:
            seen.append((key, status))
            if status == ResultStatus.CREATED:
                await plane.awork()
            if status == ResultStatus.COMPLETED:
                break
    assert set(seen[:2]) == {
        ("ghost", ResultStatus.NOTFOUND),
        (task.output, ResultStatus.CREATED),
    }
    assert seen[2:] == [(task.output, ResultStatus.COMPLETED)]


# A few keys are waited for one call each, more on one watch: both ways are run.
_FEW, _MANY = 0, 9
_BOTH_WAYS = pytest.mark.parametrize("others", [_FEW, _MANY], ids=["few", "many"])


async def _others(session: AsyncSession, count: int) -> list[str]:
    """Outputs of ``count`` more tasks, for a wait over more keys."""
    tasks = await session.submit([TaskSpec(b"other") for _ in range(count)])
    return [task.output for task in tasks]


@_BOTH_WAYS
async def test_wait_for_results_returns_once_each_has_settled(
    plane: PlaneThread, session: AsyncSession, others: int
) -> None:
    good, bad = await session.submit([TaskSpec(b"good"), TaskSpec(b"bad")])
    more = await _others(session, others)
    waiting = asyncio.create_task(
        session.wait_for_results([good.output, bad.output, *more])
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await plane.awork(_fail_on(b"bad"))
    assert await asyncio.wait_for(waiting, 10) == {
        good.output: ResultStatus.COMPLETED,
        bad.output: ResultStatus.ABORTED,
        **{key: ResultStatus.COMPLETED for key in more},
    }
    assert await session.wait_for_results([]) == {}


@_BOTH_WAYS
async def test_wait_for_results_ignores_the_same_key_in_another_session(
    plane: PlaneThread,
    async_client: AsyncClient,
    session: AsyncSession,
    others: int,
) -> None:
    other = await async_client.create_session()
    await other.submit([TaskSpec(b"elsewhere", expected_outputs=["shared"])])
    await plane.awork()
    await session.submit([TaskSpec(b"here", expected_outputs=["shared"])])
    more = await _others(session, others)
    with pytest.raises(WaitTimeout, match=f"{1 + others} results of session"):
        await session.wait_for_results(["shared", *more], timeout=0.5)


@_BOTH_WAYS
async def test_wait_for_an_unknown_result_is_not_found(
    session: AsyncSession, others: int
) -> None:
    more = await _others(session, others)
    with pytest.raises(NotFoundError, match=r"no result '?ghost"):
        await session.wait_for_results(["ghost", *more], timeout=5)


async def test_statuses_of_unknown_ids_are_not_found(session: AsyncSession) -> None:
    with pytest.raises(NotFoundError, match="nosuch"):
        await session.task_status(["nosuch"])
    with pytest.raises(NotFoundError, match="ghost"):
        await session.result_status(["ghost"])
    with pytest.raises(NotFoundError, match="reading task nosuch"):
        await session.get_task("nosuch")
