"""The Applications service: the distinct applications of the tasks' options."""

from __future__ import annotations

import grpc
import pytest

from agent.backend import Backend
from gridpod_api import applications_common_pb2, applications_service_pb2_grpc
from tests.control.conftest import (
    RunningControlPlane,
    new_session,
    refusal,
    submit,
    task_options,
)

_Request = applications_common_pb2.ListApplicationsRequest
_Sort = _Request.Sort
_Filter = _Request.Filter
_Field = _Request.OrderByField.ValueType
_Direction = _Request.OrderDirection.ValueType
_DESC = _Request.ORDER_DIRECTION_DESC

# name, version, namespace, service
_APPLICATIONS = [
    ("pricer", "2.0", "Risk", "Monte"),
    ("pricer", "1.0", "Risk", "Monte"),
    ("blender", "1.0", "Render", "Frames"),
    ("cruncher", "3.1", "Alpha", "Zeta"),
]

Application = tuple[str, str, str, str]


def stub(
    plane: RunningControlPlane,
) -> applications_service_pb2_grpc.ApplicationsAsyncStub:
    return applications_service_pb2_grpc.ApplicationsStub(plane.channel)


async def applications(backend: Backend) -> None:
    """Two tasks of each application, in two sessions, and one with none."""
    for _ in range(2):
        session_id = await new_session(backend)
        for n, (name, version, namespace, service) in enumerate(_APPLICATIONS):
            options = task_options(
                application_name=name,
                application_version=version,
                application_namespace=namespace,
                application_service=service,
            )
            await submit(backend, session_id, [f"r{n}"], options=options)
    await submit(backend, session_id, ["plain"])


async def listed(
    plane: RunningControlPlane,
    sort: _Sort | None = None,
    selection: _Filter | None = None,
) -> list[Application]:
    request = _Request(page_size=50, sort=sort, filter=selection)
    listing = await stub(plane).ListApplications(request)
    return [
        (app.name, app.version, app.namespace, app.service)
        for app in listing.applications
    ]


async def test_each_application_once_by_name(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    await applications(backend)
    # A task that names no application counts as the one with empty names.
    assert await listed(control_plane) == [("", "", "", ""), *sorted(_APPLICATIONS)]


async def test_pages(control_plane: RunningControlPlane, backend: Backend) -> None:
    await applications(backend)
    filtered = _Filter(namespace="Risk")
    first = await stub(control_plane).ListApplications(
        _Request(page=0, page_size=1, filter=filtered)
    )
    second = await stub(control_plane).ListApplications(
        _Request(page=1, page_size=1, filter=filtered)
    )
    beyond = await stub(control_plane).ListApplications(
        _Request(page=2, page_size=1, filter=filtered)
    )
    assert [first.total, second.total, beyond.total] == [2, 2, 2]
    assert [a.version for a in (*first.applications, *second.applications)] == [
        "1.0",
        "2.0",
    ]
    assert list(beyond.applications) == []
    assert (second.page, second.page_size) == (1, 1)


@pytest.mark.parametrize(
    ("field", "position"),
    [
        (_Request.ORDER_BY_FIELD_NAME, 0),
        (_Request.ORDER_BY_FIELD_VERSION, 1),
        (_Request.ORDER_BY_FIELD_NAMESPACE, 2),
        (_Request.ORDER_BY_FIELD_SERVICE, 3),
    ],
)
async def test_each_sort_field_both_ways(
    control_plane: RunningControlPlane, backend: Backend, field: int, position: int
) -> None:
    await applications(backend)
    ascending = await listed(control_plane, _Sort(field=_Field(field)))
    keys = [app[position] for app in ascending]
    assert keys == sorted(keys)
    descending = await listed(
        control_plane, _Sort(field=_Field(field), direction=_DESC)
    )
    assert descending == ascending[::-1]


async def test_each_filter_field(
    control_plane: RunningControlPlane, backend: Backend
) -> None:
    await applications(backend)
    assert await listed(control_plane, selection=_Filter(name="blender")) == [
        _APPLICATIONS[2]
    ]
    assert await listed(control_plane, selection=_Filter(version="1.0")) == sorted(
        [_APPLICATIONS[1], _APPLICATIONS[2]]
    )
    assert await listed(control_plane, selection=_Filter(namespace="Alpha")) == [
        _APPLICATIONS[3]
    ]
    assert await listed(control_plane, selection=_Filter(service="Monte")) == sorted(
        _APPLICATIONS[:2]
    )
    both = _Filter(name="pricer", version="2.0")
    assert await listed(control_plane, selection=both) == [_APPLICATIONS[0]]


async def test_malformed_listings_are_refused(
    control_plane: RunningControlPlane,
) -> None:
    for listing, named in [
        (_Request(page=-1, page_size=1), "page"),
        (_Request(page_size=0), "page_size"),
        (_Request(page_size=1, sort=_Sort(field=_Field(5))), "sort.field"),
        (_Request(page_size=1, sort=_Sort(direction=_Direction(-1))), "sort.direction"),
    ]:
        code, details = await refusal(stub(control_plane).ListApplications(listing))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(named)
