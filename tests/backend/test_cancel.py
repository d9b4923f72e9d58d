"""Cancelling tasks and sessions, queued or running."""

from __future__ import annotations

import pytest

from agent.backend import (
    Backend,
    BackendError,
    LeaseLost,
    NotCompleted,
    NotFound,
    ResultStatus,
    SessionCancelled,
    SessionStatus,
    TaskCancelled,
    TaskStatus,
)
from tests.backend.support import (
    LEASE,
    blob,
    finish,
    later,
    new_task,
    read,
    session,
    submit,
    take,
)


async def test_a_queued_task_is_cancelled_at_once(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    [dependent] = await submit(backend, sid, await new_task(backend, ["next"], ["out"]))

    [record] = await backend.cancel_tasks([task.task_id])

    assert record.task_id == task.task_id
    assert record.status == TaskStatus.CANCELLED
    assert record.ended_at is not None
    assert await backend.get_task(task.task_id) == record
    assert await backend.acquire("agent", "", LEASE) is None
    assert (await backend.get_result(sid, "out")).status == ResultStatus.ABORTED
    failed = await backend.get_task(dependent.task_id)
    assert failed.status == TaskStatus.ERROR
    assert "out" in failed.status_message
    assert (await backend.get_result(sid, "next")).status == ResultStatus.ABORTED


async def test_a_running_task_is_cancelling_until_its_agent_stops(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    await backend.stage_result(attempt, "out", await blob(backend, b"too late"))

    [record] = await backend.cancel_tasks([task.task_id])

    assert record.status == TaskStatus.CANCELLING
    assert (await backend.get_result(sid, "out")).status == ResultStatus.ABORTED
    with pytest.raises(TaskCancelled):
        await backend.renew(attempt, LEASE)
    with pytest.raises(TaskCancelled):
        await backend.complete(attempt)
    with pytest.raises(TaskCancelled):
        await backend.stage_result(attempt, "out", await blob(backend))
    with pytest.raises(TaskCancelled):
        await backend.fail(attempt, "the worker gave up")
    assert (await backend.get_task(task.task_id)).status == TaskStatus.CANCELLING

    ended = await backend.mark_cancelled(attempt)

    assert ended.status == TaskStatus.CANCELLED
    assert ended.ended_at is not None
    with pytest.raises(LeaseLost):
        await backend.complete(attempt)
    assert (await backend.get_task(task.task_id)).status == TaskStatus.CANCELLED
    with pytest.raises(NotCompleted):
        await read(backend.read_result(sid, "out"))


async def test_releasing_a_cancelling_task_ends_it_cancelled(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    await backend.cancel_tasks([task.task_id])

    await backend.release(attempt)

    assert (await backend.get_task(task.task_id)).status == TaskStatus.CANCELLED
    assert await backend.acquire("agent", "", LEASE) is None


async def test_an_expired_cancelling_task_is_recovered_cancelled(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    await take(backend)
    await backend.cancel_tasks([task.task_id])

    assert await backend.recover_expired(later()) == [task.task_id]

    assert (await backend.get_task(task.task_id)).status == TaskStatus.CANCELLED


async def test_mark_cancelled_needs_a_cancelled_task(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    with pytest.raises(BackendError):
        await backend.mark_cancelled(attempt)
    assert (await backend.get_task(task.task_id)).status == TaskStatus.PROCESSING


async def test_final_tasks_stay_as_they_are(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    done = await finish(backend, await take(backend))

    [record] = await backend.cancel_tasks([task.task_id])

    assert record == done
    assert (await backend.get_result(sid, "out")).status == ResultStatus.COMPLETED


async def test_an_unknown_id_cancels_nothing(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    with pytest.raises(NotFound):
        await backend.cancel_tasks([task.task_id, "no-such-task"])
    assert (await backend.get_task(task.task_id)).status == TaskStatus.SUBMITTED
    assert (await backend.get_result(sid, "out")).status == ResultStatus.CREATED


async def test_cancelling_a_session_cancels_its_unfinished_tasks(
    backend: Backend,
) -> None:
    sid = await session(backend)
    other = await session(backend)
    [done] = await submit(backend, sid, await new_task(backend, ["done"]))
    await finish(backend, await take(backend))
    running, queued, waiting = await submit(
        backend,
        sid,
        await new_task(backend, ["r"]),
        await new_task(backend, ["q"]),
        await new_task(backend, ["w"], ["r"]),
    )
    [elsewhere] = await submit(backend, other, await new_task(backend, ["e"]))
    attempt = await take(backend)
    assert attempt.task.task_id == running.task_id

    cancelled = await backend.cancel_session(sid)

    assert cancelled.status == SessionStatus.CANCELLED
    statuses = {
        t.task_id: (await backend.get_task(t.task_id)).status
        for t in (done, running, queued, waiting, elsewhere)
    }
    assert statuses == {
        done.task_id: TaskStatus.COMPLETED,
        running.task_id: TaskStatus.CANCELLING,
        queued.task_id: TaskStatus.CANCELLED,
        waiting.task_id: TaskStatus.CANCELLED,
        elsewhere.task_id: TaskStatus.SUBMITTED,
    }
    with pytest.raises(TaskCancelled):
        await backend.renew(attempt, LEASE)
    with pytest.raises(SessionCancelled):
        await backend.submit_tasks(sid, [await new_task(backend, ["late"])])
    assert (await take(backend)).task.task_id == elsewhere.task_id
