"""The Submitter's unary RPCs against a real server and a real SQLite state."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from agent.backend import ResultStatus, SessionStatus, TaskStatus
from gridpod_api import (
    objects_pb2,
    result_status_pb2,
    session_status_pb2,
    task_status_pb2,
)
from tests.control.submitter_support import (
    CONFIG,
    Common,
    Grid,
    complete_next,
    create_tasks,
    fail_next,
    grid_fixture,  # noqa: F401 - the fixture
    has_result,
    new_session,
    options,
    status_of,
    stored_blobs,
    take,
    task_request,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
TaskFilter = Common.TaskFilter


Statuses = Sequence[task_status_pb2.TaskStatus.ValueType]


def by_session(
    *session_ids: str, included: Statuses = (), excluded: Statuses = ()
) -> Common.TaskFilter:
    message = TaskFilter(session=TaskFilter.IdsRequest(ids=session_ids))
    return _with_statuses(message, included, excluded)


def by_task(
    *task_ids: str, included: Statuses = (), excluded: Statuses = ()
) -> Common.TaskFilter:
    message = TaskFilter(task=TaskFilter.IdsRequest(ids=task_ids))
    return _with_statuses(message, included, excluded)


def _with_statuses(
    message: Common.TaskFilter, included: Statuses, excluded: Statuses
) -> Common.TaskFilter:
    if included:
        message.included.statuses.extend(included)
    if excluded:
        message.excluded.statuses.extend(excluded)
    return message


async def refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return status_of(caught.value)


# -- configuration and sessions ---------------------------------------------------


async def test_service_configuration(grid: Grid) -> None:
    reply = await grid.stub.GetServiceConfiguration(objects_pb2.Empty())
    assert reply.data_chunk_max_size == CONFIG.data_chunk_max_size


async def test_create_session_keeps_defaults_and_partitions(grid: Grid) -> None:
    defaults = options(max_retries=2, priority=3, partition_id="b", kernel="k")
    session_id = await new_session(grid, defaults, partitions=["a", "b"])
    session = await grid.backend.get_session(session_id)
    assert session.status == SessionStatus.RUNNING
    assert session.default_options == defaults
    assert session.partition_ids == ("a", "b")


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        (Common.CreateSessionRequest(), "default_task_option"),
        (
            Common.CreateSessionRequest(default_task_option=options(max_retries=-1)),
            "max_retries",
        ),
        (
            Common.CreateSessionRequest(
                default_task_option=objects_pb2.TaskOptions(
                    max_duration=Duration(seconds=-5)
                )
            ),
            "max_duration",
        ),
        (
            # Longer than a timedelta holds: no agent could run such a task.
            Common.CreateSessionRequest(
                default_task_option=objects_pb2.TaskOptions(
                    max_duration=Duration(seconds=10**15)
                )
            ),
            "max_duration",
        ),
        (
            Common.CreateSessionRequest(
                default_task_option=options(partition_id="c"), partition_ids=["a"]
            ),
            "partition_id",
        ),
        (
            Common.CreateSessionRequest(
                default_task_option=options(), partition_ids=["a", ""]
            ),
            "partition_ids[1]",
        ),
    ],
    ids=[
        "no-defaults",
        "negative-retries",
        "negative-duration",
        "endless-duration",
        "partition",
        "empty",
    ],
)
async def test_create_session_refuses_bad_options(
    grid: Grid, request_: Common.CreateSessionRequest, named: str
) -> None:
    code, details = await refused(grid.stub.CreateSession(request_))
    assert code == INVALID
    assert named in details


async def test_cancel_session_stops_its_tasks(grid: Grid) -> None:
    session_id = await new_session(grid)
    running, queued = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"])
    )
    attempt = await take(grid.backend)
    assert attempt.task.task_id == running
    await grid.stub.CancelSession(objects_pb2.Session(id=session_id))
    assert (
        await grid.backend.get_session(session_id)
    ).status == SessionStatus.CANCELLED
    assert (await grid.backend.get_task(running)).status == TaskStatus.CANCELLING
    assert (await grid.backend.get_task(queued)).status == TaskStatus.CANCELLED


async def test_cancel_session_unknown_or_unnamed(grid: Grid) -> None:
    code, details = await refused(grid.stub.CancelSession(objects_pb2.Session(id="x")))
    assert (code, "x" in details) == (NOT_FOUND, True)
    code, _ = await refused(grid.stub.CancelSession(objects_pb2.Session()))
    assert code == INVALID


async def test_list_sessions_by_id_and_status(grid: Grid) -> None:
    first, second, third = [await new_session(grid) for _ in range(3)]
    await grid.stub.CancelSession(objects_pb2.Session(id=second))
    everything = await grid.stub.ListSessions(Common.SessionFilter())
    assert set(everything.session_ids) == {first, second, third}
    Statuses = Common.SessionFilter.StatusesRequest
    cancelled = session_status_pb2.SESSION_STATUS_CANCELLED
    running = await grid.stub.ListSessions(
        Common.SessionFilter(excluded=Statuses(statuses=[cancelled]))
    )
    assert set(running.session_ids) == {first, third}
    named = await grid.stub.ListSessions(
        Common.SessionFilter(
            sessions=[first, second], included=Statuses(statuses=[cancelled])
        )
    )
    assert list(named.session_ids) == [second]
    unspecified = session_status_pb2.SESSION_STATUS_UNSPECIFIED
    none = await grid.stub.ListSessions(
        Common.SessionFilter(included=Statuses(statuses=[unspecified]))
    )
    assert list(none.session_ids) == []


# -- CreateSmallTasks -------------------------------------------------------------


async def test_create_small_tasks_answers_in_order(grid: Grid) -> None:
    session_id = await new_session(grid)
    reply = await grid.stub.CreateSmallTasks(
        Common.CreateSmallTaskRequest(
            session_id=session_id,
            task_requests=[
                task_request(["a"], b"first"),
                task_request(["b", "c"], b"", dependencies=["a"]),
            ],
        )
    )
    first, second = reply.creation_status_list.creation_statuses
    assert list(first.task_info.expected_output_keys) == ["a"]
    assert list(second.task_info.expected_output_keys) == ["b", "c"]
    assert list(second.task_info.data_dependencies) == ["a"]
    task = await grid.backend.get_task(first.task_info.task_id)
    assert (task.session_id, task.status) == (session_id, TaskStatus.SUBMITTED)
    stored = b"".join([c async for c in grid.backend.read_blob(task.payload.blob_id)])
    assert stored == b"first"
    waiting = await grid.backend.get_task(second.task_info.task_id)
    assert waiting.status == TaskStatus.CREATING
    assert waiting.payload.size == 0


async def test_duplicate_result_key_refuses_only_that_task(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["taken"]))
    reply = await grid.stub.CreateSmallTasks(
        Common.CreateSmallTaskRequest(
            session_id=session_id,
            task_requests=[
                task_request(["fresh"]),
                task_request(["taken"]),
                task_request(["twice"]),
                task_request(["twice"]),
            ],
        )
    )
    kinds = [
        s.WhichOneof("Status") for s in reply.creation_status_list.creation_statuses
    ]
    assert kinds == ["task_info", "error", "task_info", "error"]
    errors = [s.error for s in reply.creation_status_list.creation_statuses]
    assert "taken" in errors[1]
    assert "twice" in errors[3]
    owner = (await grid.backend.get_result(session_id, "taken")).owner_task_id
    assert owner != reply.creation_status_list.creation_statuses[1].task_info.task_id
    assert await has_result(grid.backend, session_id, "fresh")


async def test_task_options_merge_over_session_defaults(grid: Grid) -> None:
    defaults = options(max_retries=2, priority=3, kernel="k", team="x")
    session_id = await new_session(grid, defaults)
    overrides = options(priority=7, team="y")
    [task_id] = await create_tasks(
        grid, session_id, task_request(["a"]), task_options=overrides
    )
    merged = (await grid.backend.get_task(task_id)).options
    assert (merged.max_retries, merged.priority) == (2, 7)
    assert dict(merged.options) == {"kernel": "k", "team": "y"}
    [plain] = await create_tasks(grid, session_id, task_request(["b"]))
    assert (await grid.backend.get_task(plain)).options == defaults


async def test_create_small_tasks_refusals_store_nothing(grid: Grid) -> None:
    session_id = await new_session(grid)
    cases = [
        (Common.CreateSmallTaskRequest(session_id="nope", task_requests=[
            task_request(["k1"])]), NOT_FOUND, "nope"),
        (Common.CreateSmallTaskRequest(task_requests=[task_request(["k2"])]),
         INVALID, "session_id"),
        (Common.CreateSmallTaskRequest(session_id=session_id), INVALID,
         "task_requests"),
        (Common.CreateSmallTaskRequest(
            session_id=session_id, task_options=options(max_retries=-3),
            task_requests=[task_request(["k3"])]), INVALID, "max_retries"),
    ]  # fmt: skip
    for request, code, named in cases:
        got, details = await refused(grid.stub.CreateSmallTasks(request))
        assert (got, named in details) == (code, True), details
    for key in ("k1", "k2", "k3"):
        assert not await has_result(grid.backend, session_id, key)
    assert stored_blobs(grid) == 0


async def test_create_small_tasks_in_cancelled_session(grid: Grid) -> None:
    session_id = await new_session(grid)
    await grid.stub.CancelSession(objects_pb2.Session(id=session_id))
    code, _ = await refused(
        grid.stub.CreateSmallTasks(
            Common.CreateSmallTaskRequest(
                session_id=session_id, task_requests=[task_request(["a"])]
            )
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert not await has_result(grid.backend, session_id, "a")
    assert stored_blobs(grid) == 0


# -- listing, counting and the status of tasks ------------------------------------


async def test_list_and_count_tasks(grid: Grid) -> None:
    session_id = await new_session(grid)
    other = await new_session(grid)
    done, failed, queued = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"]), task_request(["c"])
    )
    [elsewhere] = await create_tasks(grid, other, task_request(["a"]))
    await complete_next(grid.backend)
    await fail_next(grid.backend)
    listed = await grid.stub.ListTasks(by_session(session_id))
    assert set(listed.task_ids) == {done, failed, queued}
    submitted = task_status_pb2.TASK_STATUS_SUBMITTED
    not_queued = await grid.stub.ListTasks(
        by_session(session_id, other, excluded=[submitted])
    )
    assert set(not_queued.task_ids) == {done, failed}
    named = await grid.stub.ListTasks(by_task(done, elsewhere, included=[submitted]))
    assert list(named.task_ids) == [elsewhere]
    counts = await grid.stub.CountTasks(by_session(session_id))
    assert {(c.status, c.count) for c in counts.values} == {
        (task_status_pb2.TASK_STATUS_COMPLETED, 1),
        (task_status_pb2.TASK_STATUS_ERROR, 1),
        (submitted, 1),
    }
    everything = await grid.stub.CountTasks(TaskFilter())
    assert sum(c.count for c in everything.values) == 4
    assert list((await grid.stub.ListTasks(by_session())).task_ids) == []


async def test_get_task_status(grid: Grid) -> None:
    session_id = await new_session(grid)
    first, second = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"])
    )
    await complete_next(grid.backend)
    reply = await grid.stub.GetTaskStatus(
        Common.GetTaskStatusRequest(task_ids=[second, first])
    )
    assert [(s.task_id, s.status) for s in reply.id_statuses] == [
        (second, task_status_pb2.TASK_STATUS_SUBMITTED),
        (first, task_status_pb2.TASK_STATUS_COMPLETED),
    ]
    code, details = await refused(
        grid.stub.GetTaskStatus(Common.GetTaskStatusRequest(task_ids=[first, "ghost"]))
    )
    assert (code, "ghost" in details, first in details) == (NOT_FOUND, True, False)


async def test_get_result_status(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    await complete_next(grid.backend)
    reply = await grid.stub.GetResultStatus(
        Common.GetResultStatusRequest(session_id=session_id, result_ids=["b", "a"])
    )
    assert [(s.result_id, s.status) for s in reply.id_statuses] == [
        ("b", result_status_pb2.RESULT_STATUS_CREATED),
        ("a", result_status_pb2.RESULT_STATUS_COMPLETED),
    ]
    code, details = await refused(
        grid.stub.GetResultStatus(
            Common.GetResultStatusRequest(session_id=session_id, result_ids=["zz"])
        )
    )
    assert (code, "zz" in details) == (NOT_FOUND, True)
    code, _ = await refused(
        grid.stub.GetResultStatus(
            Common.GetResultStatusRequest(session_id="ghost", result_ids=["a"])
        )
    )
    assert code == NOT_FOUND


async def test_try_get_task_output(grid: Grid) -> None:
    session_id = await new_session(grid)
    done, failed, waiting = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"]), task_request(["c"])
    )
    await complete_next(grid.backend)
    await fail_next(grid.backend, "division by zero")

    async def output(task_id: str, session: str = session_id) -> objects_pb2.Output:
        request = objects_pb2.TaskOutputRequest(session=session, task_id=task_id)
        return await grid.stub.TryGetTaskOutput(request)

    assert (await output(done)).WhichOneof("type") == "ok"
    assert (await output(failed)).error.details == "division by zero"
    assert "not finished" in (await output(waiting)).error.details
    assert (await refused(output("ghost")))[0] == NOT_FOUND
    assert (await refused(output(done, session="other")))[0] == NOT_FOUND


# -- cancelling tasks -------------------------------------------------------------


async def test_cancel_tasks_by_id_and_by_session(grid: Grid) -> None:
    session_id = await new_session(grid)
    running, queued, spared = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"]), task_request(["c"])
    )
    await take(grid.backend)
    await grid.stub.CancelTasks(by_task(running, queued))
    assert (await grid.backend.get_task(running)).status == TaskStatus.CANCELLING
    assert (await grid.backend.get_task(queued)).status == TaskStatus.CANCELLED
    assert (await grid.backend.get_task(spared)).status == TaskStatus.SUBMITTED
    result = await grid.backend.get_result(session_id, "b")
    assert result.status == ResultStatus.ABORTED
    await grid.stub.CancelTasks(by_session(session_id))
    assert (await grid.backend.get_task(spared)).status == TaskStatus.CANCELLED
    assert (await grid.backend.get_session(session_id)).status == SessionStatus.RUNNING


async def test_cancel_tasks_keeps_to_the_status_filter(grid: Grid) -> None:
    session_id = await new_session(grid)
    running, queued = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"])
    )
    await take(grid.backend)
    processing = task_status_pb2.TASK_STATUS_PROCESSING
    await grid.stub.CancelTasks(by_session(session_id, excluded=[processing]))
    assert (await grid.backend.get_task(running)).status == TaskStatus.PROCESSING
    assert (await grid.backend.get_task(queued)).status == TaskStatus.CANCELLED


async def test_cancel_tasks_refusals(grid: Grid) -> None:
    session_id = await new_session(grid)
    [task_id] = await create_tasks(grid, session_id, task_request(["a"]))
    for empty in (TaskFilter(), by_session(), by_task()):
        assert (await refused(grid.stub.CancelTasks(empty)))[0] == INVALID
    code, details = await refused(grid.stub.CancelTasks(by_task(task_id, "ghost")))
    assert (code, "ghost" in details) == (NOT_FOUND, True)
    code, _ = await refused(grid.stub.CancelTasks(by_session("ghost")))
    assert code == NOT_FOUND
    assert (await grid.backend.get_task(task_id)).status == TaskStatus.SUBMITTED
