"""The Sessions service: listing pages, filters and sorts; reading and cancelling."""

from __future__ import annotations

import grpc
import pytest

from agent.backend import Backend, SessionRecord, TaskStatus
from gridpod_api import (
    session_status_pb2,
    sessions_common_pb2,
    sessions_service_pb2_grpc,
)
from tests.control.conftest import (
    RunningControlPlane,
    acquire,
    between,
    new_session,
    refusal,
    submit,
    task_options,
)

_Request = sessions_common_pb2.ListSessionsRequest
_Sort = _Request.Sort
_Filter = _Request.Filter
_Field = _Request.OrderByField.ValueType
_Direction = _Request.OrderDirection.ValueType
_Status = session_status_pb2.SessionStatus.ValueType
_RUNNING = session_status_pb2.SESSION_STATUS_RUNNING
_CANCELLED = session_status_pb2.SESSION_STATUS_CANCELLED


def stub(plane: RunningControlPlane) -> sessions_service_pb2_grpc.SessionsAsyncStub:
    return sessions_service_pb2_grpc.SessionsStub(plane.channel)


async def sessions(backend: Backend, count: int) -> list[SessionRecord]:
    records = []
    for n in range(count):
        options = task_options(
            application_name=f"app{n % 2}", application_version=f"v{n}"
        )
        records.append(await backend.create_session(options, []))
    return records


async def listed_ids(
    plane: RunningControlPlane,
    sort: _Sort | None = None,
    selection: _Request.Filter | None = None,
) -> list[str]:
    request = _Request(page_size=100, sort=sort, filter=selection)
    listing = await stub(plane).ListSessions(request)
    return [session.session_id for session in listing.sessions]


async def test_pages_count_every_session_and_end_empty(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    ids = [record.session_id for record in await sessions(backend, 5)]
    pages = []
    for page in range(4):
        listing = await stub(control_plane).ListSessions(
            _Request(page=page, page_size=2)
        )
        assert (listing.page, listing.page_size, listing.total) == (page, 2, 5)
        pages.append([session.session_id for session in listing.sessions])
    assert pages == [ids[0:2], ids[2:4], ids[4:5], []]


async def test_each_sort_field_and_direction(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    records = await sessions(backend, 4)
    ids = [record.session_id for record in records]
    for record in (records[2], records[0]):
        await backend.cancel_session(record.session_id)
    by_id = _Sort(field=_Request.ORDER_BY_FIELD_SESSION_ID)
    assert await listed_ids(control_plane, sort=by_id) == sorted(ids)
    by_id.direction = _Request.ORDER_DIRECTION_DESC
    assert await listed_ids(control_plane, sort=by_id) == sorted(ids, reverse=True)
    by_created = _Sort(
        field=_Request.ORDER_BY_FIELD_CREATED_AT,
        direction=_Request.ORDER_DIRECTION_DESC,
    )
    assert await listed_ids(control_plane, sort=by_created) == ids[::-1]
    by_status = _Sort(field=_Request.ORDER_BY_FIELD_STATUS)
    statuses = await listed_ids(control_plane, sort=by_status)
    assert set(statuses[:2]) == {ids[1], ids[3]}  # RUNNING sorts before CANCELLED
    by_cancel = _Sort(
        field=_Request.ORDER_BY_FIELD_CANCELLED_AT,
        direction=_Request.ORDER_DIRECTION_ASC,
    )
    cancelled = _Request.Filter(status=_CANCELLED)
    assert await listed_ids(control_plane, by_cancel, cancelled) == [ids[2], ids[0]]


async def test_no_sort_or_an_unspecified_one_is_oldest_first(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    ids = [record.session_id for record in await sessions(backend, 3)]
    assert await listed_ids(control_plane) == ids
    assert await listed_ids(control_plane, sort=_Sort()) == ids
    newest_first = _Sort(direction=_Request.ORDER_DIRECTION_DESC)
    assert await listed_ids(control_plane, sort=newest_first) == ids[::-1]


async def test_each_filter_field(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    records = await sessions(backend, 4)
    ids = [record.session_id for record in records]
    cancelled = [await backend.cancel_session(ids[n]) for n in (1, 3)]

    async def listed(selection: _Request.Filter) -> list[str]:
        return await listed_ids(control_plane, selection=selection)

    assert await listed(_Filter(session_id=ids[2])) == [ids[2]]
    assert await listed(_Filter(status=_CANCELLED)) == [ids[1], ids[3]]
    assert await listed(_Filter(status=_RUNNING)) == [ids[0], ids[2]]
    assert await listed(_Filter(application_name="app1")) == [ids[1], ids[3]]
    assert await listed(_Filter(application_version="v2")) == [ids[2]]
    assert (
        await listed(_Filter(application_name="app1", application_version="v2")) == []
    )
    middle = between(records[1].created_at, records[2].created_at)
    assert await listed(_Filter(created_after=middle)) == ids[2:]
    assert await listed(_Filter(created_before=middle)) == ids[:2]
    cancel_middle = between(cancelled[0].cancelled_at, cancelled[1].cancelled_at)
    assert await listed(_Filter(cancelled_after=cancel_middle)) == [ids[3]]
    assert await listed(_Filter(cancelled_before=cancel_middle)) == [ids[1]]
    assert await listed(_Filter(session_id="no-such-session")) == []


async def test_task_options_only_when_asked(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    await new_session(backend, task_options(application_name="kernels", priority=3))
    plain = await stub(control_plane).ListSessions(_Request(page_size=10))
    assert not plain.sessions[0].HasField("options")
    detailed = await stub(control_plane).ListSessions(
        _Request(page_size=10, with_task_options=True)
    )
    options = detailed.sessions[0].options
    assert (options.application_name, options.priority) == ("kernels", 3)


@pytest.mark.parametrize(
    ("listing", "named"),
    [
        (_Request(page=-1, page_size=10), "page"),
        (_Request(page_size=0), "page_size"),
        (_Request(page_size=-5), "page_size"),
        (_Request(page_size=10_001), "page_size"),
        (_Request(page_size=10, sort=_Sort(field=_Field(99))), "sort.field"),
        (_Request(page_size=10, sort=_Sort(direction=_Direction(7))), "sort.direction"),
        (_Request(page_size=10, filter=_Filter(status=_Status(42))), "filter.status"),
    ],
)
async def test_malformed_listings_are_refused(
    control_plane: RunningControlPlane, listing: _Request, named: str
) -> None:
    code, details = await refusal(stub(control_plane).ListSessions(listing))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(named)


async def test_get_session_is_its_raw_record(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    record = await backend.create_session(
        task_options(max_retries=2, partition_id="gpu"), ["gpu", "cpu"]
    )
    got = await stub(control_plane).GetSession(
        sessions_common_pb2.GetSessionRequest(session_id=record.session_id)
    )
    raw = got.session
    assert raw.session_id == record.session_id
    assert raw.status == _RUNNING
    assert list(raw.partition_ids) == ["gpu", "cpu"]
    assert (raw.options.max_retries, raw.options.partition_id) == (2, "gpu")
    assert raw.created_at.ToDatetime(tzinfo=record.created_at.tzinfo) == (
        record.created_at
    )
    assert not raw.HasField("cancelled_at")


async def test_unknown_or_missing_session_ids(
    control_plane: RunningControlPlane,
) -> None:
    sessions_stub = stub(control_plane)
    code, details = await refusal(
        sessions_stub.GetSession(sessions_common_pb2.GetSessionRequest(session_id="x"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'x'" in details
    code, _ = await refusal(
        sessions_stub.CancelSession(
            sessions_common_pb2.CancelSessionRequest(session_id="x")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await refusal(
        sessions_stub.GetSession(sessions_common_pb2.GetSessionRequest())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("session_id")


async def test_cancelling_stops_the_tasks_and_can_be_repeated(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    session_id = await new_session(backend)
    running = await submit(backend, session_id, ["a"])
    await acquire(backend)
    queued = await submit(backend, session_id, ["b"])
    request = sessions_common_pb2.CancelSessionRequest(session_id=session_id)
    cancelled = await stub(control_plane).CancelSession(request)
    assert cancelled.session.status == _CANCELLED
    assert cancelled.session.HasField("cancelled_at")
    assert (await backend.get_task(running.task_id)).status == TaskStatus.CANCELLING
    assert (await backend.get_task(queued.task_id)).status == TaskStatus.CANCELLED
    again = await stub(control_plane).CancelSession(request)
    assert again.session.cancelled_at == cancelled.session.cancelled_at
    got = await stub(control_plane).GetSession(
        sessions_common_pb2.GetSessionRequest(session_id=session_id)
    )
    assert got.session == cancelled.session
