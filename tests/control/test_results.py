"""The Results service: listings of results, and the task that owns each."""

from __future__ import annotations

import grpc
import pytest

from agent.backend import Backend
from gridpod_api import result_status_pb2, results_common_pb2, results_service_pb2_grpc
from tests.control.conftest import (
    RunningControlPlane,
    acquire,
    between,
    complete,
    new_session,
    refusal,
    submit,
)

_Request = results_common_pb2.ListResultsRequest
_Sort = _Request.Sort
_Filter = _Request.Filter
_Field = _Request.OrderByField.ValueType
_Direction = _Request.OrderDirection.ValueType
_Status = result_status_pb2.ResultStatus.ValueType
_DESC = _Request.ORDER_DIRECTION_DESC


def stub(plane: RunningControlPlane) -> results_service_pb2_grpc.ResultsAsyncStub:
    return results_service_pb2_grpc.ResultsStub(plane.channel)


async def listed_names(
    plane: RunningControlPlane,
    sort: _Sort | None = None,
    selection: _Filter | None = None,
) -> list[str]:
    request = _Request(page_size=100, sort=sort, filter=selection)
    listing = await stub(plane).ListResults(request)
    return [result.name for result in listing.results]


async def test_pages_and_raw_results(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    task = await submit(backend, session_id, ["r0", "r1", "r2"])
    listing = await stub(control_plane).ListResults(_Request(page=1, page_size=2))
    assert (listing.page, listing.page_size, listing.total) == (1, 2, 3)
    [last] = listing.results
    assert (last.session_id, last.name, last.owner_task_id) == (
        session_id,
        "r2",
        task.task_id,
    )
    assert last.status == result_status_pb2.RESULT_STATUS_CREATED
    assert last.created_at.seconds > 0
    beyond = await stub(control_plane).ListResults(_Request(page=2, page_size=2))
    assert (list(beyond.results), beyond.total) == ([], 3)


async def test_each_filter_field(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    first, second = await new_session(backend), await new_session(backend)
    done = await submit(backend, first, ["a"])
    await complete(backend, await acquire(backend))
    waiting = await submit(backend, first, ["b"], ["a"])
    await submit(backend, second, ["c"])
    a = await backend.get_result(first, "a")
    b = await backend.get_result(first, "b")

    async def listed(selection: _Filter) -> list[str]:
        return await listed_names(control_plane, selection=selection)

    assert await listed(_Filter(session_id=second)) == ["c"]
    assert await listed(_Filter(name="b")) == ["b"]
    assert await listed(_Filter(owner_task_id=done.task_id)) == ["a"]
    assert await listed(_Filter(owner_task_id=waiting.task_id)) == ["b"]
    completed = _Filter(status=result_status_pb2.RESULT_STATUS_COMPLETED)
    assert await listed(completed) == ["a"]
    assert await listed(_Filter(status=result_status_pb2.RESULT_STATUS_CREATED)) == [
        "b",
        "c",
    ]
    middle = between(a.created_at, b.created_at)
    assert await listed(_Filter(created_after=middle)) == ["b", "c"]
    assert await listed(_Filter(created_before=middle)) == ["a"]
    # No stored result is NOTFOUND: that status describes a missing one.
    missing = _Filter(status=result_status_pb2.RESULT_STATUS_NOTFOUND)
    assert await listed(missing) == []


async def test_each_sort_field_and_direction(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    first, second = await new_session(backend), await new_session(backend)
    one = await submit(backend, second, ["z"])
    two = await submit(backend, first, ["y", "x"])
    await complete(backend, await acquire(backend))  # "z" is COMPLETED

    async def order(field: int, direction: int = 0) -> list[str]:
        sort = _Sort(field=_Field(field), direction=_Direction(direction))
        return await listed_names(control_plane, sort)

    assert await order(_Request.ORDER_BY_FIELD_NAME) == ["x", "y", "z"]
    assert await order(_Request.ORDER_BY_FIELD_NAME, _DESC) == ["z", "y", "x"]
    # "y" and "x" were created together: the tie is broken by name.
    assert await order(_Request.ORDER_BY_FIELD_CREATED_AT) == ["z", "x", "y"]
    assert await order(_Request.ORDER_BY_FIELD_CREATED_AT, _DESC) == ["y", "x", "z"]
    assert (await order(_Request.ORDER_BY_FIELD_STATUS, _DESC))[0] == "z"
    # Ties on the sort key are broken by session and name, the same way.
    names = {"z": (second, one.task_id), "y": (first, two.task_id)}
    names["x"] = names["y"]
    by_session = sorted(names, key=lambda name: (names[name][0], name))
    assert await order(_Request.ORDER_BY_FIELD_SESSION_ID) == by_session
    by_owner = sorted(
        names, key=lambda name: (names[name][1], *names[name]), reverse=True
    )
    assert await order(_Request.ORDER_BY_FIELD_OWNER_TASK_ID, _DESC) == by_owner


@pytest.mark.parametrize(
    ("listing", "named"),
    [
        (_Request(page=-1, page_size=1), "page"),
        (_Request(page_size=0), "page_size"),
        (_Request(page_size=1, sort=_Sort(field=_Field(9))), "sort.field"),
        (_Request(page_size=1, filter=_Filter(status=_Status(4))), "filter.status"),
    ],
)
async def test_malformed_listings_are_refused(
    control_plane: RunningControlPlane, listing: _Request, named: str
) -> None:
    code, details = await refusal(stub(control_plane).ListResults(listing))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(named)


async def test_owner_task_of_each_result(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    one = await submit(backend, session_id, ["a", "b"])
    two = await submit(backend, session_id, ["c"])
    request = results_common_pb2.GetOwnerTaskIdRequest(
        session_id=session_id, result_id=["c", "a", "b"]
    )
    answer = await stub(control_plane).GetOwnerTaskId(request)
    assert answer.session_id == session_id
    assert [(m.result_id, m.task_id) for m in answer.result_task] == [
        ("c", two.task_id),
        ("a", one.task_id),
        ("b", one.task_id),
    ]


async def test_owner_of_unknown_results_or_sessions(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    await submit(backend, session_id, ["a"])
    owners = stub(control_plane).GetOwnerTaskId
    code, details = await refusal(
        owners(
            results_common_pb2.GetOwnerTaskIdRequest(
                session_id=session_id, result_id=["a", "zz"]
            )
        )
    )
    assert (code, "'zz'" in details) == (grpc.StatusCode.NOT_FOUND, True)
    code, _ = await refusal(
        owners(results_common_pb2.GetOwnerTaskIdRequest(session_id="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await refusal(
        owners(results_common_pb2.GetOwnerTaskIdRequest(result_id=["a"]))
    )
    assert (code, details.startswith("session_id")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        True,
    )
