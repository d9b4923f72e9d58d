"""Ending attempts: results sent, commits, failures, retries, releases, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.backend import (
    Backend,
    LeaseLost,
    MissingOutputs,
    NotOwned,
    ResultStatus,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend.support import (
    AGENT,
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

RETRY_TWICE = objects_pb2.TaskOptions(max_retries=2)


async def test_results_sent_and_committed_are_readable(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["a", "b"]))
    attempt = await take(backend)
    await backend.stage_result(attempt, "a", await blob(backend, b"alpha"))
    await backend.stage_result(attempt, "b", await blob(backend, b""))
    assert (await backend.get_result(sid, "a")).status == ResultStatus.CREATED

    await backend.complete(attempt)
    done = await backend.get_task(task.task_id)

    assert done.task_id == task.task_id
    assert done.status == TaskStatus.COMPLETED
    assert done.ended_at is not None
    assert (await backend.get_task(task.task_id)).status == TaskStatus.COMPLETED
    result = await backend.get_result(sid, "a")
    assert result.status == ResultStatus.COMPLETED
    assert result.size == 5
    assert result.completed_at is not None
    assert await read(backend.read_result(sid, "a")) == b"alpha"
    assert await read(backend.read_result(sid, "b")) == b""


async def test_a_key_the_task_does_not_own_is_refused_and_not_stored(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(
        backend,
        sid,
        await new_task(backend, ["mine"]),
        await new_task(backend, ["theirs"]),
    )
    attempt = await take(backend)
    assert attempt.task.expected_outputs == ("mine",)

    with pytest.raises(NotOwned):
        await backend.stage_result(attempt, "theirs", await blob(backend, b"intruder"))
    with pytest.raises(NotOwned):
        await backend.stage_result(attempt, "unknown", await blob(backend, b"?"))
    await finish(backend, attempt)

    theirs = await backend.get_result(sid, "theirs")
    assert theirs.status == ResultStatus.CREATED
    other = await take(backend)
    await finish(backend, other, {"theirs": b"rightful"})
    assert await read(backend.read_result(sid, "theirs")) == b"rightful"


async def test_sending_a_key_again_replaces_the_value(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    await backend.stage_result(attempt, "out", await blob(backend, b"draft"))
    await backend.stage_result(attempt, "out", await blob(backend, b"final"))
    await backend.complete(attempt)
    assert await read(backend.read_result(sid, "out")) == b"final"


async def test_a_dependent_is_queued_when_its_last_dependency_completes(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(
        backend, sid, await new_task(backend, ["a"]), await new_task(backend, ["b"])
    )
    [joined] = await submit(backend, sid, await new_task(backend, ["ab"], ["a", "b"]))
    first, second = await take(backend), await take(backend)

    await finish(backend, first)
    assert (await backend.get_task(joined.task_id)).status == TaskStatus.CREATING
    assert await backend.acquire("agent-2", "", LEASE) is None

    await finish(backend, second)
    queued = await backend.get_task(joined.task_id)
    assert queued.status == TaskStatus.SUBMITTED
    assert queued.submitted_at is not None
    assert (await take(backend)).task.task_id == joined.task_id


async def test_one_result_queues_every_task_waiting_only_for_it(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["shared"]))
    waiting = await submit(
        backend,
        sid,
        *[await new_task(backend, [f"use-{i}"], ["shared"]) for i in range(5)],
    )
    await finish(backend, await take(backend))
    for task in waiting:
        assert (await backend.get_task(task.task_id)).status == TaskStatus.SUBMITTED


async def test_results_given_to_the_commit_queue_the_tasks_waiting_for_them(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["a", "b"]))
    await submit(backend, sid, await new_task(backend, ["other"]))
    both, one, more = await submit(
        backend,
        sid,
        await new_task(backend, ["uses-both"], ["a", "b"]),
        await new_task(backend, ["uses-b"], ["b"]),
        await new_task(backend, ["uses-a-and-other"], ["a", "other"]),
    )
    attempt = await take(backend)

    await backend.complete(attempt, {"b": b"bee", "a": b"ay"})

    for queued in (both, one):
        assert (await backend.get_task(queued.task_id)).status == TaskStatus.SUBMITTED
    assert (await backend.get_task(more.task_id)).status == TaskStatus.CREATING
    await finish(backend, await take(backend))
    assert (await backend.get_task(more.task_id)).status == TaskStatus.SUBMITTED


async def test_a_commit_missing_an_output_is_refused_and_changes_nothing(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["a", "b", "c"]))
    attempt = await take(backend)
    await backend.stage_result(attempt, "b", await blob(backend, b"bee"))

    with pytest.raises(MissingOutputs) as refused:
        await backend.complete(attempt)

    assert refused.value.keys == ["a", "c"]
    assert (await backend.get_task(task.task_id)).status == TaskStatus.PROCESSING
    assert (await backend.get_result(sid, "b")).status == ResultStatus.CREATED
    await backend.stage_result(attempt, "a", await blob(backend, b"ay"))
    await backend.stage_result(attempt, "c", await blob(backend, b"see"))
    await backend.complete(attempt)
    assert (await backend.get_task(task.task_id)).status == TaskStatus.COMPLETED
    assert await read(backend.read_result(sid, "b")) == b"bee"


async def test_a_late_commit_is_refused_and_changes_nothing(backend: Backend) -> None:
    sid = await session(backend, RETRY_TWICE)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    await backend.stage_result(attempt, "out", await blob(backend, b"late"))
    [recovered] = await backend.recover_expired(later())
    failed = await backend.get_task(task.task_id)
    result = await backend.get_result(sid, "out")

    with pytest.raises(LeaseLost):
        await backend.complete(attempt)
    with pytest.raises(LeaseLost):
        await backend.stage_result(attempt, "out", await blob(backend, b"later"))

    assert recovered == task.task_id
    assert await backend.get_task(task.task_id) == failed
    assert await backend.get_result(sid, "out") == result
    assert result.status == ResultStatus.CREATED


async def test_a_failure_with_retries_left_queues_a_new_task(backend: Backend) -> None:
    sid = await session(backend, RETRY_TWICE)
    [task] = await submit(backend, sid, await new_task(backend, ["out"], []))
    first = await take(backend)
    await backend.stage_result(first, "out", await blob(backend, b"discarded"))

    retry = await backend.fail(first, "first error")

    assert retry.task_id != task.task_id
    assert retry.status == TaskStatus.SUBMITTED
    assert retry.retry_of_ids == (task.task_id,)
    assert retry.attempt == 2
    assert retry.payload == task.payload
    assert retry.expected_outputs == task.expected_outputs
    assert retry.options == task.options
    failed = await backend.get_task(task.task_id)
    assert failed.status == TaskStatus.ERROR
    assert failed.status_message == "first error"
    result = await backend.get_result(sid, "out")
    assert result.owner_task_id == retry.task_id
    assert result.status == ResultStatus.CREATED

    second = await take(backend)
    assert second.task.task_id == retry.task_id
    third_task = await backend.fail(second, "second error", TaskStatus.TIMEOUT)
    assert third_task.retry_of_ids == (task.task_id, retry.task_id)
    assert (await backend.get_task(retry.task_id)).status == TaskStatus.TIMEOUT
    assert (await backend.get_task(retry.task_id)).status_message == "second error"
    assert (await backend.get_task(task.task_id)).status_message == "first error"

    third = await take(backend)
    await finish(backend, third, {"out": b"third time lucky"})
    assert await read(backend.read_result(sid, "out")) == b"third time lucky"


async def test_retries_keep_data_dependencies(backend: Backend) -> None:
    sid = await session(backend, RETRY_TWICE)
    await submit(backend, sid, await new_task(backend, ["in"]))
    [task] = await submit(backend, sid, await new_task(backend, ["out"], ["in"]))
    await finish(backend, await take(backend))
    retry = await backend.fail(await take(backend), "boom")
    assert retry.data_dependencies == ("in",)
    assert retry.status == TaskStatus.SUBMITTED
    assert (await take(backend)).task.retry_of_ids == (task.task_id,)


async def test_spent_retries_end_the_task_and_abort_its_outputs(
    backend: Backend,
) -> None:
    sid = await session(backend, objects_pb2.TaskOptions(max_retries=1))
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    retry = await backend.fail(await take(backend), "once")

    final = await backend.fail(await take(backend), "twice", TaskStatus.TIMEOUT)

    assert final.task_id == retry.task_id
    assert final.status == TaskStatus.TIMEOUT
    assert final.status_message == "twice"
    assert (await backend.get_task(task.task_id)).status_message == "once"
    assert (await backend.get_result(sid, "out")).status == ResultStatus.ABORTED
    assert await backend.acquire("agent", "", LEASE) is None


async def test_without_retries_an_abort_fails_dependents_transitively(
    backend: Backend,
) -> None:
    sid = await session(backend)
    first, second, third = await submit(
        backend,
        sid,
        await new_task(backend, ["a"]),
        await new_task(backend, ["b"], ["a"]),
        await new_task(backend, ["c"], ["b"]),
    )
    [independent] = await submit(backend, sid, await new_task(backend, ["d"]))
    attempt = await take(backend)
    assert attempt.task.task_id == first.task_id

    failed = await backend.fail(attempt, "kernel raised ValueError")

    assert failed.task_id == first.task_id
    assert failed.status == TaskStatus.ERROR
    assert failed.status_message == "kernel raised ValueError"
    for key in "abc":
        assert (await backend.get_result(sid, key)).status == ResultStatus.ABORTED
    for task, missing in [(second, "a"), (third, "b")]:
        record = await backend.get_task(task.task_id)
        assert record.status == TaskStatus.ERROR
        assert repr(missing) in record.status_message
        assert record.ended_at is not None
    assert (await backend.get_task(independent.task_id)).status == TaskStatus.SUBMITTED


async def test_release_requeues_the_same_task_without_a_retry(
    backend: Backend,
) -> None:
    sid = await session(backend, RETRY_TWICE)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    first = await take(backend)
    await backend.stage_result(first, "out", await blob(backend, b"discarded"))

    await backend.release(first)

    record = await backend.get_task(task.task_id)
    assert record.status == TaskStatus.SUBMITTED
    assert record.owner_agent_id == ""
    assert record.retry_of_ids == ()
    again = await take(backend, agent="agent-2")
    assert again.task.task_id == task.task_id
    assert again.task.attempt == 1
    with pytest.raises(MissingOutputs):
        await backend.complete(again)
    with pytest.raises(LeaseLost):
        await backend.release(first)


async def test_recovery_fails_expired_attempts_only(backend: Backend) -> None:
    sid = await session(backend, objects_pb2.TaskOptions(max_retries=1))
    await submit(
        backend, sid, await new_task(backend, ["a"]), await new_task(backend, ["b"])
    )
    short = await take(backend)
    long = await backend.acquire(AGENT, "", timedelta(hours=2))
    assert long is not None
    assert await backend.recover_expired() == []

    recovered = await backend.recover_expired(
        short.lease_expires_at + timedelta(seconds=1)
    )

    assert recovered == [short.task.task_id]
    failed = await backend.get_task(short.task.task_id)
    assert failed.status == TaskStatus.ERROR
    assert "lease expired" in failed.status_message
    assert AGENT in failed.status_message
    assert (await backend.get_task(long.task.task_id)).status == TaskStatus.DISPATCHED
    retry = await take(backend)
    assert retry.task.retry_of_ids == (short.task.task_id,)
    assert retry.task.expected_outputs == ("a",)
