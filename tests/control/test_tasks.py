"""The Tasks service: listings, the full record of a task, cancelling, outputs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import grpc
import pytest

from agent.backend import Backend, NewTask, TaskRecord, TaskStatus
from gridpod_api import task_status_pb2, tasks_common_pb2, tasks_service_pb2_grpc
from tests.control.conftest import (
    AGENT_ID,
    RunningControlPlane,
    acquire,
    between,
    complete,
    new_session,
    refusal,
    run_to_completion,
    submit,
    task_options,
    timestamp,
)

_Request = tasks_common_pb2.ListTasksRequest
_Sort = _Request.Sort
_Filter = _Request.Filter
_Field = _Request.OrderByField.ValueType
_Direction = _Request.OrderDirection.ValueType
_Status = task_status_pb2.TaskStatus.ValueType
_ASC = _Request.ORDER_DIRECTION_ASC
_DESC = _Request.ORDER_DIRECTION_DESC
_LONG_AGO = timestamp(datetime(2000, 1, 1, tzinfo=timezone.utc))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def stub(plane: RunningControlPlane) -> tasks_service_pb2_grpc.TasksAsyncStub:
    return tasks_service_pb2_grpc.TasksStub(plane.channel)


async def listed_ids(
    plane: RunningControlPlane,
    sort: _Sort | None = None,
    selection: _Filter | None = None,
) -> list[str]:
    request = _Request(page_size=100, sort=sort, filter=selection)
    listing = await stub(plane).ListTasks(request)
    return [task.id for task in listing.tasks]


async def tasks(backend: Backend, session_id: str, count: int) -> list[TaskRecord]:
    return [await submit(backend, session_id, [f"out{n}"]) for n in range(count)]


async def test_pages_count_every_task_and_end_empty(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    ids = [record.task_id for record in await tasks(backend, session_id, 5)]
    pages = []
    for page in range(4):
        listing = await stub(control_plane).ListTasks(_Request(page=page, page_size=2))
        assert (listing.page, listing.page_size, listing.total) == (page, 2, 5)
        pages.append([task.id for task in listing.tasks])
    assert pages == [ids[0:2], ids[2:4], ids[4:5], []]


async def test_sorts_by_id_session_status_and_creation(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    first, second = await new_session(backend), await new_session(backend)
    records = await tasks(backend, first, 2) + await tasks(backend, second, 2)
    ids = [record.task_id for record in records]
    await acquire(backend)  # the oldest one is PROCESSING, the rest SUBMITTED

    async def order(field: int, direction: int = _ASC) -> list[str]:
        sort = _Sort(field=_Field(field), direction=_Direction(direction))
        return await listed_ids(control_plane, sort)

    assert await order(_Request.ORDER_BY_FIELD_TASK_ID) == sorted(ids)
    assert await order(_Request.ORDER_BY_FIELD_TASK_ID, _DESC) == sorted(ids)[::-1]
    # Ties on the sort key are broken by task id.
    by_session = sorted(records, key=lambda record: (record.session_id, record.task_id))
    assert await order(_Request.ORDER_BY_FIELD_SESSION_ID) == [
        record.task_id for record in by_session
    ]
    assert (await order(_Request.ORDER_BY_FIELD_STATUS, _DESC))[0] == ids[0]
    assert (await order(_Request.ORDER_BY_FIELD_STATUS))[-1] == ids[0]
    assert await order(_Request.ORDER_BY_FIELD_CREATED_AT) == ids
    assert await order(_Request.ORDER_BY_FIELD_CREATED_AT, _DESC) == ids[::-1]
    assert await order(_Request.ORDER_BY_FIELD_UNSPECIFIED, _DESC) == ids[::-1]


async def test_sorts_and_filters_by_start_and_end(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    records = await tasks(backend, session_id, 3)
    attempts = [await acquire(backend) for _ in records]
    ended = [await complete(backend, attempt) for attempt in attempts[::-1]]
    ids = [record.task_id for record in records]
    started = _Filter(started_after=_LONG_AGO)
    by_start = _Sort(field=_Request.ORDER_BY_FIELD_STARTED_AT, direction=_DESC)
    assert await listed_ids(control_plane, by_start, started) == ids[::-1]
    by_end = _Sort(field=_Request.ORDER_BY_FIELD_ENDED_AT, direction=_ASC)
    assert await listed_ids(control_plane, by_end, started) == ids[::-1]

    start_middle = between(ended[1].started_at, ended[0].started_at)
    assert (
        await listed_ids(control_plane, selection=_Filter(started_after=start_middle))
        == ids[2:]
    )
    assert (
        await listed_ids(control_plane, selection=_Filter(started_before=start_middle))
        == ids[:2]
    )
    end_middle = between(ended[0].ended_at, ended[1].ended_at)
    assert (
        await listed_ids(control_plane, selection=_Filter(ended_after=end_middle))
        == ids[:2]
    )
    assert (
        await listed_ids(control_plane, selection=_Filter(ended_before=end_middle))
        == ids[2:]
    )


async def test_filters_by_session_status_and_creation(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    first, second = await new_session(backend), await new_session(backend)
    records = await tasks(backend, first, 2) + await tasks(backend, second, 1)
    ids = [record.task_id for record in records]
    await acquire(backend, start=False)

    async def listed(selection: _Filter) -> list[str]:
        return await listed_ids(control_plane, selection=selection)

    assert await listed(_Filter(session_id=second)) == ids[2:]
    assert await listed(_Filter(status=task_status_pb2.TASK_STATUS_DISPATCHED)) == [
        ids[0]
    ]
    assert (
        await listed(_Filter(status=task_status_pb2.TASK_STATUS_SUBMITTED)) == (ids[1:])
    )
    middle = between(records[0].created_at, records[1].created_at)
    assert await listed(_Filter(created_after=middle)) == ids[1:]
    assert await listed(_Filter(created_before=middle, session_id=first)) == ids[:1]
    # Never stored: a task goes from PROCESSING to its end.
    processed = _Request(
        page_size=10, filter=_Filter(status=task_status_pb2.TASK_STATUS_PROCESSED)
    )
    listing = await stub(control_plane).ListTasks(processed)
    assert (list(listing.tasks), listing.total) == ([], 0)


async def test_errors_only_when_asked_and_only_of_failed_tasks(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    await tasks(backend, session_id, 2)
    await backend.fail(await acquire(backend), "the kernel raised ValueError")
    await run_to_completion(backend)
    request = _Request(page_size=10)
    plain = await stub(control_plane).ListTasks(request)
    assert [task.error for task in plain.tasks] == ["", ""]
    request.with_errors = True
    detailed = await stub(control_plane).ListTasks(request)
    assert [task.error for task in detailed.tasks] == [
        "the kernel raised ValueError",
        "",
    ]
    assert detailed.tasks[0].status == task_status_pb2.TASK_STATUS_ERROR
    assert detailed.tasks[1].status == task_status_pb2.TASK_STATUS_COMPLETED


@pytest.mark.parametrize(
    ("listing", "named"),
    [
        (_Request(page=-2, page_size=10), "page"),
        (_Request(page_size=0), "page_size"),
        (_Request(page_size=10, sort=_Sort(field=_Field(42))), "sort.field"),
        (_Request(page_size=10, sort=_Sort(direction=_Direction(3))), "sort.direction"),
        (_Request(page_size=10, filter=_Filter(status=_Status(99))), "filter.status"),
    ],
)
async def test_malformed_listings_are_refused(
    control_plane: RunningControlPlane, listing: _Request, named: str
) -> None:
    code, details = await refusal(stub(control_plane).ListTasks(listing))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(named)


async def get_task(
    plane: RunningControlPlane, task_id: str
) -> tasks_common_pb2.TaskRaw:
    request = tasks_common_pb2.GetTaskRequest(task_id=task_id)
    return (await stub(plane).GetTask(request)).task


async def test_get_task_after_a_retry_and_after_completion(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    options = task_options(max_retries=1, application_name="pricing")
    session_id = await new_session(backend, options)
    await submit(backend, session_id, ["base"])
    await run_to_completion(backend)
    first = await submit(backend, session_id, ["price"], ["base"])
    retry = await backend.fail(await acquire(backend), "worker lost")
    failed = await get_task(control_plane, first.task_id)
    assert failed.status == task_status_pb2.TASK_STATUS_ERROR
    assert (failed.output.success, failed.output.error) == (False, "worker lost")
    assert failed.status_message == "worker lost"
    assert failed.HasField("ended_at")
    queued = await get_task(control_plane, retry.task_id)
    assert list(queued.retry_of_ids) == [first.task_id]
    assert queued.status == task_status_pb2.TASK_STATUS_SUBMITTED
    assert not queued.HasField("output")
    assert not queued.HasField("started_at")

    await asyncio.sleep(0.002)  # so that every step has its own moment
    done = await run_to_completion(backend)
    raw = await get_task(control_plane, retry.task_id)
    assert raw.id == done.task_id == retry.task_id
    assert raw.session_id == session_id
    assert raw.owner_pod_id == AGENT_ID
    assert list(raw.data_dependencies) == ["base"]
    assert list(raw.expected_output_ids) == ["price"]
    assert list(raw.retry_of_ids) == [first.task_id]
    assert list(raw.parent_task_ids) == list(done.parent_task_ids)
    assert raw.status == task_status_pb2.TASK_STATUS_COMPLETED
    assert (raw.output.success, raw.output.error) == (True, "")
    assert (raw.options.application_name, raw.options.max_retries) == ("pricing", 1)
    moments = [
        raw.created_at,
        raw.submitted_at,
        raw.acquired_at,
        raw.started_at,
        raw.ended_at,
    ]
    assert all(moment.seconds > 0 for moment in moments)
    as_datetimes = [moment.ToDatetime() for moment in moments]
    assert as_datetimes == sorted(as_datetimes)
    assert raw.received_at == raw.acquired_at


async def test_a_subtask_names_its_parent(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    parent = await submit(backend, session_id, ["final"])
    attempt = await acquire(backend)
    payload = await backend.write_blob(_chunks(b"sub"))
    [child] = await backend.stage_subtasks(attempt, [NewTask(payload, ["final"])])
    assert isinstance(child, TaskRecord)
    await backend.complete(attempt)
    raw = await get_task(control_plane, child.task_id)
    assert list(raw.parent_task_ids) == [parent.task_id]
    assert raw.status == task_status_pb2.TASK_STATUS_SUBMITTED


async def test_unknown_or_missing_task_ids(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    tasks_stub = stub(control_plane)
    code, details = await refusal(
        tasks_stub.GetTask(tasks_common_pb2.GetTaskRequest(task_id="nope"))
    )
    assert (code, "'nope'" in details) == (grpc.StatusCode.NOT_FOUND, True)
    code, details = await refusal(tasks_stub.GetTask(tasks_common_pb2.GetTaskRequest()))
    assert (code, details.startswith("task_id")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        True,
    )
    session_id = await new_session(backend)
    known = await submit(backend, session_id, ["a"])
    code, details = await refusal(
        tasks_stub.GetResultIds(
            tasks_common_pb2.GetResultIdsRequest(task_id=[known.task_id, "nope"])
        )
    )
    assert (code, "'nope'" in details) == (grpc.StatusCode.NOT_FOUND, True)


async def test_cancel_tasks_dispatched_and_queued(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    dispatched = await submit(backend, session_id, ["a"])
    await acquire(backend, start=False)
    finished = await submit(backend, session_id, ["b"])
    await run_to_completion(backend)
    queued = await submit(backend, session_id, ["c"])
    request = tasks_common_pb2.CancelTasksRequest(
        task_ids=[dispatched.task_id, queued.task_id, finished.task_id]
    )
    answer = await stub(control_plane).CancelTasks(request)
    assert [(task.id, task.status) for task in answer.tasks] == [
        (dispatched.task_id, task_status_pb2.TASK_STATUS_CANCELLING),
        (queued.task_id, task_status_pb2.TASK_STATUS_CANCELLED),
        (finished.task_id, task_status_pb2.TASK_STATUS_COMPLETED),
    ]
    assert (await backend.get_task(queued.task_id)).status == TaskStatus.CANCELLED


async def test_cancel_tasks_with_an_unknown_id_cancels_nothing(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    queued = await submit(backend, session_id, ["a"])
    request = tasks_common_pb2.CancelTasksRequest(task_ids=[queued.task_id, "nope"])
    code, _ = await refusal(stub(control_plane).CancelTasks(request))
    assert code == grpc.StatusCode.NOT_FOUND
    assert (await backend.get_task(queued.task_id)).status == TaskStatus.SUBMITTED


async def test_result_ids_of_each_task_in_order(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    one = await submit(backend, session_id, ["a", "b"])
    two = await submit(backend, session_id, ["c"], ["a"])
    request = tasks_common_pb2.GetResultIdsRequest(
        task_id=[two.task_id, one.task_id, two.task_id]
    )
    answer = await stub(control_plane).GetResultIds(request)
    assert [(m.task_id, list(m.result_ids)) for m in answer.task_results] == [
        (two.task_id, ["c"]),
        (one.task_id, ["a", "b"]),
        (two.task_id, ["c"]),
    ]
    empty = await stub(control_plane).GetResultIds(
        tasks_common_pb2.GetResultIdsRequest()
    )
    assert list(empty.task_results) == []
