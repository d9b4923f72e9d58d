"""Subtasks: staged by a running attempt, visible only once it commits."""

from __future__ import annotations

import pytest

from agent.backend import (
    Attempt,
    Backend,
    MissingOutputs,
    NotFound,
    NotOwned,
    ResultStatus,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend.support import (
    AGENT,
    LEASE,
    blob,
    finish,
    new_task,
    read,
    session,
    submit,
    take,
)


async def _stage(
    backend: Backend, attempt: Attempt, outputs: list[str], dependencies: list[str]
) -> TaskRecord:
    [answer] = await backend.stage_subtasks(
        attempt, [await new_task(backend, outputs, dependencies)]
    )
    assert isinstance(answer, TaskRecord), answer
    return answer


async def test_subtasks_are_invisible_until_the_parent_commits(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [parent] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)

    sub = await _stage(backend, attempt, ["child-out"], [])

    assert sub.status == TaskStatus.CREATING
    assert sub.session_id == sid
    assert sub.parent_task_ids == (parent.task_id,)
    assert await backend.acquire("agent-2", "", LEASE) is None
    with pytest.raises(NotFound):
        await backend.get_result(sid, "child-out")

    await finish(backend, attempt)

    assert (await backend.get_task(sub.task_id)).status == TaskStatus.SUBMITTED
    child = await take(backend)
    assert child.task.task_id == sub.task_id
    result = await backend.get_result(sid, "child-out")
    assert result.owner_task_id == sub.task_id
    assert result.status == ResultStatus.CREATED


async def test_subtasks_merge_their_options_over_the_session_defaults(
    backend: Backend,
) -> None:
    sid = await session(backend, objects_pb2.TaskOptions(max_retries=5, priority=1))
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    [sub] = await backend.stage_subtasks(
        attempt,
        [await new_task(backend, ["x"])],
        objects_pb2.TaskOptions(priority=9),
    )
    assert isinstance(sub, TaskRecord)
    assert sub.options.max_retries == 5
    assert sub.options.priority == 9


async def test_a_delegated_output_changes_owner_at_commit(backend: Backend) -> None:
    sid = await session(backend)
    [parent] = await submit(backend, sid, await new_task(backend, ["out", "own"]))
    attempt = await take(backend)

    sub = await _stage(backend, attempt, ["out"], [])

    assert (await backend.get_result(sid, "out")).owner_task_id == parent.task_id
    with pytest.raises(NotOwned):
        await backend.stage_result(attempt, "out", await blob(backend, b"mine?"))
    await finish(backend, attempt, {"own": b"own value"})
    result = await backend.get_result(sid, "out")
    assert result.owner_task_id == sub.task_id
    assert result.status == ResultStatus.CREATED
    child = await take(backend)
    await finish(backend, child, {"out": b"from the child"})
    assert await read(backend.read_result(sid, "out")) == b"from the child"


async def test_an_output_is_delegated_once_and_never_after_it_was_sent(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["once", "sent"]))
    await submit(backend, sid, await new_task(backend, ["foreign"]))
    attempt = await take(backend)
    await backend.stage_result(attempt, "sent", await blob(backend, b"value"))
    await _stage(backend, attempt, ["once"], [])

    answers = await backend.stage_subtasks(
        attempt,
        [
            await new_task(backend, ["once"]),
            await new_task(backend, ["sent"]),
            await new_task(backend, ["foreign"]),
        ],
    )

    assert all(isinstance(a, TaskRefusal) for a in answers)
    assert [a.index for a in answers if isinstance(a, TaskRefusal)] == [0, 1, 2]


async def test_a_subtask_waiting_on_its_parents_output_is_queued_by_the_commit(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    first = await _stage(backend, attempt, ["step"], ["out"])
    second = await _stage(backend, attempt, ["last"], ["step"])

    await finish(backend, attempt)

    assert (await backend.get_task(first.task_id)).status == TaskStatus.SUBMITTED
    assert (await backend.get_task(second.task_id)).status == TaskStatus.CREATING
    await finish(backend, await take(backend))
    assert (await backend.get_task(second.task_id)).status == TaskStatus.SUBMITTED


async def test_a_commit_with_its_results_in_hand_commits_subtasks_and_delegations(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [parent] = await submit(backend, sid, await new_task(backend, ["out", "handed"]))
    attempt = await take(backend)
    waiting = await _stage(backend, attempt, ["step"], ["out"])
    heir = await _stage(backend, attempt, ["handed"], [])

    await backend.complete(attempt, {"out": b"value"})

    assert (await backend.get_task(waiting.task_id)).status == TaskStatus.SUBMITTED
    assert (await backend.get_task(heir.task_id)).status == TaskStatus.SUBMITTED
    handed = await backend.get_result(sid, "handed")
    assert handed.owner_task_id == heir.task_id
    assert handed.status == ResultStatus.CREATED
    assert await read(backend.read_result(sid, "out")) == b"value"
    assert (await backend.get_task(parent.task_id)).status == TaskStatus.COMPLETED


async def test_a_failed_parent_discards_its_subtasks_and_their_results(
    backend: Backend,
) -> None:
    sid = await session(backend, objects_pb2.TaskOptions(max_retries=1))
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    delegate = await _stage(backend, attempt, ["out"], [])
    extra = await _stage(backend, attempt, ["extra"], [])

    retry = await backend.fail(attempt, "the kernel crashed")

    for sub in (delegate, extra):
        with pytest.raises(NotFound):
            await backend.get_task(sub.task_id)
    with pytest.raises(NotFound):
        await backend.get_result(sid, "extra")
    assert (await backend.get_result(sid, "out")).owner_task_id == retry.task_id
    again = await take(backend)
    assert again.task.task_id == retry.task_id
    assert await backend.acquire("agent-2", "", LEASE) is None
    with pytest.raises(MissingOutputs):
        await backend.complete(again)
    await _stage(backend, again, ["extra"], [])


async def test_a_released_parent_discards_its_subtasks(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    sub = await _stage(backend, attempt, ["out"], [])

    await backend.release(attempt)

    with pytest.raises(NotFound):
        await backend.get_task(sub.task_id)
    again = await take(backend)
    await backend.stage_result(again, "out", await blob(backend, b"now mine"))


async def test_a_subtask_whose_dependency_aborted_meanwhile_fails_at_commit(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    await submit(backend, sid, await new_task(backend, ["doomed"]))
    parent = await take(backend)
    other = await take(backend, agent="agent-2")
    sub = await _stage(backend, parent, ["child"], ["doomed"])

    await backend.fail(other, "no luck")
    await finish(backend, parent)

    record = await backend.get_task(sub.task_id)
    assert record.status == TaskStatus.ERROR
    assert "doomed" in record.status_message
    assert (await backend.get_result(sid, "child")).status == ResultStatus.ABORTED
    assert await backend.acquire(AGENT, "", LEASE) is None


async def test_a_subtask_cancelled_before_the_commit_aborts_what_it_took_over(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    sub = await _stage(backend, attempt, ["out"], [])

    [cancelled] = await backend.cancel_tasks([sub.task_id])
    await backend.complete(attempt)

    assert cancelled.status == TaskStatus.CANCELLED
    assert (await backend.get_task(sub.task_id)).status == TaskStatus.CANCELLED
    result = await backend.get_result(sid, "out")
    assert result.owner_task_id == sub.task_id
    assert result.status == ResultStatus.ABORTED
