"""The Results service: list results, and name the task that owns each."""

from __future__ import annotations

from collections.abc import Sequence

from agent.backend import ResultQuery, ResultStatus
from agent.backend._queries import ResultSort
from agent.control._convert import result_raw
from agent.control._requests import (
    Context,
    matching,
    not_found,
    refusing,
    required_id,
    sort_order,
    status_filter,
    time_bound,
    window,
)
from agent.control._visibility import ScopedService
from gridpod_api import result_status_pb2, results_common_pb2, results_service_pb2_grpc

__all__ = ["ResultsService"]

_Request = results_common_pb2.ListResultsRequest
_OwnerMap = results_common_pb2.GetOwnerTaskIdResponse.MapResultTask

_SORTS: dict[int, ResultSort] = {
    _Request.ORDER_BY_FIELD_SESSION_ID: "session_id",
    _Request.ORDER_BY_FIELD_NAME: "key",
    _Request.ORDER_BY_FIELD_OWNER_TASK_ID: "owner_task_id",
    _Request.ORDER_BY_FIELD_STATUS: "status",
    _Request.ORDER_BY_FIELD_CREATED_AT: "created_at",
}


def _query(request: _Request, max_page_size: int) -> ResultQuery | None:
    """The backend query of a listing; None when its filter can match nothing."""
    rows = window(request.page, request.page_size, max_page_size)
    sort, descending = sort_order(request, _SORTS, "created_at")
    selected = request.filter
    # RESULT_STATUS_NOTFOUND describes a missing result: no stored one has it.
    statuses = status_filter(
        selected.status,
        result_status_pb2.ResultStatus.DESCRIPTOR,
        ResultStatus,
        "filter.status",
    )
    if statuses is None:
        return None
    return ResultQuery(
        session_ids=matching(selected.session_id),
        keys=matching(selected.name),
        owner_task_ids=matching(selected.owner_task_id),
        statuses=statuses,
        created_after=time_bound(selected, "created_after"),
        created_before=time_bound(selected, "created_before"),
        sort=sort,
        descending=descending,
        offset=rows.offset,
        limit=rows.limit,
    )


class ResultsService(ScopedService, results_service_pb2_grpc.ResultsServicer):
    """Results as the backend stores them (a result's name is its key); listings
    page and sort as the Sessions service's, by creation date when no sort is
    given. A caller sees only the results of the sessions it sees."""

    @refusing
    async def ListResults(
        self, request: _Request, context: Context
    ) -> results_common_pb2.ListResultsResponse:
        query = _query(request, self._config.max_page_size)
        response = results_common_pb2.ListResultsResponse(
            page=request.page, page_size=request.page_size
        )
        if query is not None:
            query = await self._scope(context).results(query)
        if query is None:
            return response
        found = await self._backend.list_results(query)
        response.total = found.total
        response.results.extend(result_raw(record) for record in found.items)
        return response

    @refusing
    async def GetOwnerTaskId(
        self, request: results_common_pb2.GetOwnerTaskIdRequest, context: Context
    ) -> results_common_pb2.GetOwnerTaskIdResponse:
        session_id = required_id(request.session_id, "session_id")
        # Raises NotFound for an unknown session, which a listing would not.
        await self._scope(context).session(session_id)
        owners = await self._owners(session_id, request.result_id)
        return results_common_pb2.GetOwnerTaskIdResponse(
            session_id=session_id,
            result_task=[
                _OwnerMap(result_id=key, task_id=owners[key])
                for key in request.result_id
            ],
        )

    async def _owners(self, session_id: str, keys: Sequence[str]) -> dict[str, str]:
        """The owner of each result, read at once; refused if one is unknown."""
        if not keys:
            return {}
        query = ResultQuery(session_ids=(session_id,), keys=set(keys))
        page = await self._backend.list_results(query)
        owners = {record.key: record.owner_task_id for record in page.items}
        for key in keys:
            if key not in owners:
                not_found(f"no result {key!r} in session {session_id}")
        return owners
