"""The Applications service: the applications that tasks' options name."""

from __future__ import annotations

from agent.backend import ApplicationQuery, Backend
from agent.backend._queries import ApplicationSort
from agent.control._config import ControlPlaneConfig
from agent.control._convert import application_raw
from agent.control._requests import Context, refusing, sort_order, window
from gridpod_api import applications_common_pb2, applications_service_pb2_grpc

__all__ = ["ApplicationsService"]

_Request = applications_common_pb2.ListApplicationsRequest

_SORTS: dict[int, ApplicationSort] = {
    _Request.ORDER_BY_FIELD_NAME: "name",
    _Request.ORDER_BY_FIELD_VERSION: "version",
    _Request.ORDER_BY_FIELD_NAMESPACE: "namespace",
    _Request.ORDER_BY_FIELD_SERVICE: "service",
}


def _query(request: _Request, max_page_size: int) -> ApplicationQuery:
    rows = window(request.page, request.page_size, max_page_size)
    sort, descending = sort_order(request, _SORTS, "name")
    selected = request.filter
    return ApplicationQuery(
        name=selected.name or None,
        version=selected.version or None,
        namespace=selected.namespace or None,
        service=selected.service or None,
        sort=sort,
        descending=descending,
        offset=rows.offset,
        limit=rows.limit,
    )


class ApplicationsService(applications_service_pb2_grpc.ApplicationsServicer):
    """Each distinct name, version, namespace and service in the options of the
    committed tasks; listings page as the Sessions service's, by name when no sort
    is given."""

    def __init__(self, backend: Backend, config: ControlPlaneConfig) -> None:
        self._backend = backend
        self._config = config

    @refusing
    async def ListApplications(
        self, request: _Request, context: Context
    ) -> applications_common_pb2.ListApplicationsResponse:
        query = _query(request, self._config.max_page_size)
        found = await self._backend.list_applications(query)
        return applications_common_pb2.ListApplicationsResponse(
            applications=[application_raw(record) for record in found.items],
            page=request.page,
            page_size=request.page_size,
            total=found.total,
        )
