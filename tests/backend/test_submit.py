"""Creating tasks: ids, results, merged options and every reason to refuse."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.backend import (
    Backend,
    BlobRef,
    NewTask,
    NotFound,
    ResultStatus,
    SessionCancelled,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend.support import blob, finish, new_task, session, submit, take


async def test_each_task_gets_an_id_and_owns_its_new_results(backend: Backend) -> None:
    sid = await session(backend)
    payload = await blob(backend, b"the payload")

    first, second = await submit(
        backend, sid, NewTask(payload, ["a", "b"]), NewTask(payload, ["c"])
    )

    assert first.task_id != second.task_id
    assert first.session_id == sid
    assert first.payload == payload
    assert first.expected_outputs == ("a", "b")
    assert first.created_at is not None
    assert first.created_at.tzinfo is not None
    assert await backend.get_task(first.task_id) == first
    for key, owner in [("a", first), ("b", first), ("c", second)]:
        result = await backend.get_result(sid, key)
        assert result.owner_task_id == owner.task_id
        assert result.status == ResultStatus.CREATED
        assert result.session_id == sid


async def test_options_merge_field_by_field_over_the_session_defaults(
    backend: Backend,
) -> None:
    defaults = objects_pb2.TaskOptions(
        max_retries=2, priority=1, application_name="app", engine_type="python"
    )
    defaults.options.update({"kernel": "square", "level": "1"})
    defaults.max_duration.FromTimedelta(timedelta(seconds=10))
    sid = await session(backend, defaults)
    options = objects_pb2.TaskOptions(priority=5, application_version="2.0")
    options.options.update({"level": "3", "extra": "yes"})

    [task] = await submit(
        backend, sid, await new_task(backend, ["out"]), options=options
    )

    merged = task.options
    assert merged.max_retries == 2
    assert merged.priority == 5
    assert merged.application_name == "app"
    assert merged.application_version == "2.0"
    assert merged.engine_type == "python"
    assert dict(merged.options) == {"kernel": "square", "level": "3", "extra": "yes"}
    assert merged.max_duration.ToTimedelta() == timedelta(seconds=10)
    assert (await backend.get_task(task.task_id)).options == merged


async def test_a_task_without_options_takes_the_defaults(backend: Backend) -> None:
    defaults = objects_pb2.TaskOptions(max_retries=4, priority=3)
    sid = await session(backend, defaults)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    assert task.options.max_retries == 4
    assert task.options.priority == 3


async def test_an_existing_key_refuses_that_task_and_stores_none_of_it(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [owner] = await submit(backend, sid, await new_task(backend, ["taken"]))

    answers = await backend.submit_tasks(
        sid,
        [
            await new_task(backend, ["before"]),
            await new_task(backend, ["fresh", "taken"]),
            await new_task(backend, ["after"]),
        ],
    )

    assert isinstance(answers[0], TaskRecord)
    assert isinstance(answers[2], TaskRecord)
    refusal = answers[1]
    assert isinstance(refusal, TaskRefusal)
    assert refusal.index == 1
    assert "taken" in refusal.reason
    with pytest.raises(NotFound):
        await backend.get_result(sid, "fresh")
    assert (await backend.get_result(sid, "taken")).owner_task_id == owner.task_id
    assert (await backend.get_result(sid, "after")).status == ResultStatus.CREATED


async def test_a_key_listed_by_an_earlier_task_of_the_request_is_refused(
    backend: Backend,
) -> None:
    sid = await session(backend)
    answers = await backend.submit_tasks(
        sid, [await new_task(backend, ["k"]), await new_task(backend, ["k"])]
    )
    assert isinstance(answers[0], TaskRecord)
    assert isinstance(answers[1], TaskRefusal)
    assert (await backend.get_result(sid, "k")).owner_task_id == answers[0].task_id


async def test_keys_are_per_session(backend: Backend) -> None:
    first, second = await session(backend), await session(backend)
    [a] = await submit(backend, first, await new_task(backend, ["same"]))
    [b] = await submit(backend, second, await new_task(backend, ["same"]))
    assert (await backend.get_result(first, "same")).owner_task_id == a.task_id
    assert (await backend.get_result(second, "same")).owner_task_id == b.task_id


@pytest.mark.parametrize(
    ("outputs", "dependencies", "words"),
    [
        ((), (), "expected output"),
        (("x", "x"), (), "more than once"),
        (("x",), ("x",), "own"),
        (("x",), ("nowhere",), "nowhere"),
    ],
)
async def test_malformed_tasks_are_refused_with_a_reason(
    backend: Backend,
    outputs: tuple[str, ...],
    dependencies: tuple[str, ...],
    words: str,
) -> None:
    sid = await session(backend)
    [answer] = await backend.submit_tasks(
        sid, [await new_task(backend, outputs, dependencies)]
    )
    assert isinstance(answer, TaskRefusal)
    assert words in answer.reason
    with pytest.raises(NotFound):
        await backend.get_result(sid, "x")


async def test_an_unknown_payload_blob_is_refused(backend: Backend) -> None:
    sid = await session(backend)
    ghost = BlobRef("no-such-blob", 3)
    [answer] = await backend.submit_tasks(sid, [NewTask(ghost, ["x"])])
    assert isinstance(answer, TaskRefusal)
    assert "no-such-blob" in answer.reason


async def test_a_dependency_on_a_result_of_another_session_is_refused(
    backend: Backend,
) -> None:
    other, sid = await session(backend), await session(backend)
    await submit(backend, other, await new_task(backend, ["elsewhere"]))
    [answer] = await backend.submit_tasks(
        sid, [await new_task(backend, ["x"], ["elsewhere"])]
    )
    assert isinstance(answer, TaskRefusal)


async def test_a_dependency_on_an_earlier_task_of_the_request_waits_for_it(
    backend: Backend,
) -> None:
    sid = await session(backend)
    producer, consumer = await submit(
        backend,
        sid,
        await new_task(backend, ["made"]),
        await new_task(backend, ["used"], ["made"]),
    )
    assert producer.status == TaskStatus.SUBMITTED
    assert producer.submitted_at is not None
    assert consumer.status == TaskStatus.CREATING
    assert consumer.submitted_at is None
    assert consumer.data_dependencies == ("made",)


async def test_a_task_whose_dependencies_are_completed_is_queued_at_once(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["done"]))
    await finish(backend, await take(backend))

    [task] = await submit(backend, sid, await new_task(backend, ["next"], ["done"]))

    assert task.status == TaskStatus.SUBMITTED
    assert (await take(backend)).task.task_id == task.task_id


async def test_a_task_whose_dependency_is_aborted_is_created_failed(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["lost"]))
    await backend.fail(await take(backend), "kernel error")

    [task] = await submit(backend, sid, await new_task(backend, ["next"], ["lost"]))

    assert task.status == TaskStatus.ERROR
    assert "lost" in task.status_message
    assert (await backend.get_result(sid, "next")).status == ResultStatus.ABORTED


async def test_a_partition_outside_the_sessions_is_refused(backend: Backend) -> None:
    sid = await session(backend, partitions=["cpu", "gpu"])
    options = objects_pb2.TaskOptions(partition_id="tpu")
    [answer] = await backend.submit_tasks(
        sid, [await new_task(backend, ["x"])], options
    )
    assert isinstance(answer, TaskRefusal)
    assert "tpu" in answer.reason


async def test_no_partition_means_the_sessions_first(backend: Backend) -> None:
    sid = await session(backend, partitions=["cpu", "gpu"])
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    assert task.options.partition_id == "cpu"
    assert await backend.acquire("agent", "gpu", timedelta(seconds=5)) is None
    assert (await take(backend, "cpu")).task.task_id == task.task_id


async def test_unknown_and_cancelled_sessions_take_no_tasks(backend: Backend) -> None:
    task = await new_task(backend, ["x"])
    with pytest.raises(NotFound):
        await backend.submit_tasks("no-such-session", [task])
    sid = await session(backend)
    await backend.cancel_session(sid)
    with pytest.raises(SessionCancelled):
        await backend.submit_tasks(sid, [task])
    with pytest.raises(NotFound):
        await backend.get_result(sid, "x")
