"""The Sessions service: list, read and cancel sessions."""

from __future__ import annotations

import logging

from agent.backend import SessionQuery, SessionStatus
from agent.backend._queries import SessionSort
from agent.control._convert import session_raw, session_summary
from agent.control._requests import (
    Context,
    matching,
    refusing,
    required_id,
    sort_order,
    status_filter,
    time_bound,
    window,
)
from agent.control._visibility import ScopedService
from gridpod_api import (
    session_status_pb2,
    sessions_common_pb2,
    sessions_service_pb2_grpc,
)

__all__ = ["SessionsService"]

logger = logging.getLogger(__name__)

_Request = sessions_common_pb2.ListSessionsRequest

_SORTS: dict[int, SessionSort] = {
    _Request.ORDER_BY_FIELD_SESSION_ID: "session_id",
    _Request.ORDER_BY_FIELD_STATUS: "status",
    _Request.ORDER_BY_FIELD_CREATED_AT: "created_at",
    _Request.ORDER_BY_FIELD_CANCELLED_AT: "cancelled_at",
}


def _query(request: _Request, max_page_size: int) -> SessionQuery | None:
    """The backend query of a listing; None when its filter can match nothing."""
    rows = window(request.page, request.page_size, max_page_size)
    sort, descending = sort_order(request, _SORTS, "created_at")
    selected = request.filter
    statuses = status_filter(
        selected.status,
        session_status_pb2.SessionStatus.DESCRIPTOR,
        SessionStatus,
        "filter.status",
    )
    if statuses is None:
        return None
    return SessionQuery(
        session_ids=matching(selected.session_id),
        statuses=statuses,
        application_name=selected.application_name or None,
        application_version=selected.application_version or None,
        created_after=time_bound(selected, "created_after"),
        created_before=time_bound(selected, "created_before"),
        cancelled_after=time_bound(selected, "cancelled_after"),
        cancelled_before=time_bound(selected, "cancelled_before"),
        sort=sort,
        descending=descending,
        offset=rows.offset,
        limit=rows.limit,
    )


class SessionsService(ScopedService, sessions_service_pb2_grpc.SessionsServicer):
    """Sessions as the backend stores them.

    A listing's pages start at 0 and hold 1 to ``max_page_size`` sessions; a page
    past the end is empty, and every page tells the total. A listing that sends no
    filter lists everything; one that sends no sort is sorted by creation date,
    oldest first: an unspecified field is the creation date, an unspecified
    direction ascending. Enum values the API does not define are refused. A caller
    sees only its own sessions, unless it may see every one.
    """

    @refusing
    async def ListSessions(
        self, request: _Request, context: Context
    ) -> sessions_common_pb2.ListSessionsResponse:
        query = _query(request, self._config.max_page_size)
        response = sessions_common_pb2.ListSessionsResponse(
            page=request.page, page_size=request.page_size
        )
        if query is None:
            return response
        found = await self._backend.list_sessions(self._scope(context).sessions(query))
        response.total = found.total
        response.sessions.extend(
            session_summary(record, with_task_options=request.with_task_options)
            for record in found.items
        )
        return response

    @refusing
    async def GetSession(
        self, request: sessions_common_pb2.GetSessionRequest, context: Context
    ) -> sessions_common_pb2.GetSessionResponse:
        session_id = required_id(request.session_id, "session_id")
        record = await self._scope(context).session(session_id)
        return sessions_common_pb2.GetSessionResponse(session=session_raw(record))

    @refusing
    async def CancelSession(
        self, request: sessions_common_pb2.CancelSessionRequest, context: Context
    ) -> sessions_common_pb2.CancelSessionResponse:
        session_id = required_id(request.session_id, "session_id")
        await self._scope(context).require(session_id)
        record = await self._backend.cancel_session(session_id)
        logger.info(
            "session %s cancelled", session_id, extra={"session_id": session_id}
        )
        return sessions_common_pb2.CancelSessionResponse(session=session_raw(record))
