"""The Tasks service: list, read and cancel tasks, and name their expected outputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.backend import TaskQuery, TaskRecord, TaskStatus
from agent.backend._queries import TaskSort
from agent.control._convert import task_raw, task_summary
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
from agent.control._visibility import Scope, ScopedService
from gridpod_api import task_status_pb2, tasks_common_pb2, tasks_service_pb2_grpc

__all__ = ["TasksService"]

logger = logging.getLogger(__name__)

_Request = tasks_common_pb2.ListTasksRequest

_SORTS: dict[int, TaskSort] = {
    _Request.ORDER_BY_FIELD_TASK_ID: "task_id",
    _Request.ORDER_BY_FIELD_SESSION_ID: "session_id",
    _Request.ORDER_BY_FIELD_STATUS: "status",
    _Request.ORDER_BY_FIELD_CREATED_AT: "created_at",
    _Request.ORDER_BY_FIELD_STARTED_AT: "started_at",
    _Request.ORDER_BY_FIELD_ENDED_AT: "ended_at",
}


def _query(request: _Request, max_page_size: int) -> TaskQuery | None:
    """The backend query of a listing; None when its filter can match nothing."""
    rows = window(request.page, request.page_size, max_page_size)
    sort, descending = sort_order(request, _SORTS, "created_at")
    selected = request.filter
    # TASK_STATUS_PROCESSED is never stored: a task goes from PROCESSING to its end.
    statuses = status_filter(
        selected.status,
        task_status_pb2.TaskStatus.DESCRIPTOR,
        TaskStatus,
        "filter.status",
    )
    if statuses is None:
        return None
    return TaskQuery(
        session_ids=matching(selected.session_id),
        statuses=statuses,
        created_after=time_bound(selected, "created_after"),
        created_before=time_bound(selected, "created_before"),
        started_after=time_bound(selected, "started_after"),
        started_before=time_bound(selected, "started_before"),
        ended_after=time_bound(selected, "ended_after"),
        ended_before=time_bound(selected, "ended_before"),
        sort=sort,
        descending=descending,
        offset=rows.offset,
        limit=rows.limit,
    )


class TasksService(ScopedService, tasks_service_pb2_grpc.TasksServicer):
    """Tasks as the backend stores them; listings page and sort as the Sessions
    service's, by creation date when no sort is given. A caller sees only the
    tasks of the sessions it sees."""

    @refusing
    async def ListTasks(
        self, request: _Request, context: Context
    ) -> tasks_common_pb2.ListTasksResponse:
        query = _query(request, self._config.max_page_size)
        response = tasks_common_pb2.ListTasksResponse(
            page=request.page, page_size=request.page_size
        )
        if query is not None:
            query = await self._scope(context).tasks(query)
        if query is None:
            return response
        found = await self._backend.list_tasks(query)
        response.total = found.total
        response.tasks.extend(
            task_summary(record, with_errors=request.with_errors)
            for record in found.items
        )
        return response

    @refusing
    async def GetTask(
        self, request: tasks_common_pb2.GetTaskRequest, context: Context
    ) -> tasks_common_pb2.GetTaskResponse:
        task_id = required_id(request.task_id, "task_id")
        record = await self._scope(context).task(task_id)
        return tasks_common_pb2.GetTaskResponse(task=task_raw(record))

    @refusing
    async def CancelTasks(
        self, request: tasks_common_pb2.CancelTasksRequest, context: Context
    ) -> tasks_common_pb2.CancelTasksResponse:
        scope = self._scope(context)
        task_ids = list(request.task_ids)
        if not scope.sees_all:
            task_ids = list(await self._known_tasks(scope, task_ids, missing_ok=True))
        records = await self._backend.cancel_tasks(task_ids)
        if records:
            logger.info("%d task(s) asked to cancel", len(records))
        return tasks_common_pb2.CancelTasksResponse(
            tasks=[task_summary(record) for record in records]
        )

    @refusing
    async def GetResultIds(
        self, request: tasks_common_pb2.GetResultIdsRequest, context: Context
    ) -> tasks_common_pb2.GetResultIdsResponse:
        found = await self._known_tasks(self._scope(context), request.task_id)
        return tasks_common_pb2.GetResultIdsResponse(
            task_results=[
                tasks_common_pb2.GetResultIdsResponse.MapTaskResult(
                    task_id=task_id, result_ids=found[task_id].expected_outputs
                )
                for task_id in request.task_id
            ]
        )

    async def _known_tasks(
        self, scope: Scope, task_ids: Sequence[str], *, missing_ok: bool = False
    ) -> dict[str, TaskRecord]:
        """The tasks of these ids that the caller sees, read at once; refused if
        one is unknown, unless ``missing_ok``."""
        found: dict[str, TaskRecord] = {}
        query = (
            await scope.tasks(TaskQuery(task_ids=set(task_ids))) if task_ids else None
        )
        if query is not None:
            page = await self._backend.list_tasks(query)
            found = {record.task_id: record for record in page.items}
        for task_id in task_ids:
            if task_id not in found and not missing_ok:
                not_found(f"no task {task_id!r}")
        return found
