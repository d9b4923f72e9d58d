"""The backend's records as the API's messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from agent.backend import (
    ApplicationRecord,
    ResultRecord,
    SessionRecord,
    TaskRecord,
    TaskStatus,
)
from gridpod_api import (
    applications_common_pb2,
    result_status_pb2,
    results_common_pb2,
    session_status_pb2,
    sessions_common_pb2,
    task_status_pb2,
    tasks_common_pb2,
)

__all__ = [
    "application_raw",
    "result_raw",
    "session_raw",
    "session_summary",
    "task_raw",
    "task_summary",
    "timestamp",
]

# The statuses whose message says why the task failed.
_FAILED = frozenset({TaskStatus.ERROR, TaskStatus.TIMEOUT})


def timestamp(moment: datetime | None) -> Timestamp | None:
    """``moment`` as a Timestamp; None leaves the field unset."""
    if moment is None:
        return None
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def _task_status(status: TaskStatus) -> task_status_pb2.TaskStatus.ValueType:
    return task_status_pb2.TaskStatus.ValueType(status)


def session_raw(record: SessionRecord) -> sessions_common_pb2.SessionRaw:
    return sessions_common_pb2.SessionRaw(
        session_id=record.session_id,
        status=session_status_pb2.SessionStatus.ValueType(record.status),
        partition_ids=record.partition_ids,
        options=record.default_options,
        created_at=timestamp(record.created_at),
        cancelled_at=timestamp(record.cancelled_at),
    )


def session_summary(
    record: SessionRecord, *, with_task_options: bool
) -> sessions_common_pb2.SessionSummary:
    return sessions_common_pb2.SessionSummary(
        session_id=record.session_id,
        status=session_status_pb2.SessionStatus.ValueType(record.status),
        created_at=timestamp(record.created_at),
        cancelled_at=timestamp(record.cancelled_at),
        options=record.default_options if with_task_options else None,
    )


def _output(record: TaskRecord) -> tasks_common_pb2.TaskRaw.Output | None:
    """How a final task ended; a task still on its way has no output yet."""
    if not record.status.is_final:
        return None
    if record.status == TaskStatus.COMPLETED:
        return tasks_common_pb2.TaskRaw.Output(success=True)
    return tasks_common_pb2.TaskRaw.Output(success=False, error=record.status_message)


def task_raw(record: TaskRecord) -> tasks_common_pb2.TaskRaw:
    """Every field the backend knows of the task.

    The agent takes a task from the queue and acquires it in one step, so
    ``received_at`` is ``acquired_at``.
    """
    return tasks_common_pb2.TaskRaw(
        id=record.task_id,
        session_id=record.session_id,
        owner_pod_id=record.owner_agent_id,
        parent_task_ids=record.parent_task_ids,
        data_dependencies=record.data_dependencies,
        expected_output_ids=record.expected_outputs,
        retry_of_ids=record.retry_of_ids,
        status=_task_status(record.status),
        status_message=record.status_message,
        options=record.options,
        created_at=timestamp(record.created_at),
        submitted_at=timestamp(record.submitted_at),
        started_at=timestamp(record.started_at),
        ended_at=timestamp(record.ended_at),
        output=_output(record),
        received_at=timestamp(record.acquired_at),
        acquired_at=timestamp(record.acquired_at),
    )


def task_summary(
    record: TaskRecord, *, with_errors: bool = False
) -> tasks_common_pb2.TaskSummary:
    failed = with_errors and record.status in _FAILED
    return tasks_common_pb2.TaskSummary(
        id=record.task_id,
        session_id=record.session_id,
        options=record.options,
        status=_task_status(record.status),
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        ended_at=timestamp(record.ended_at),
        error=record.status_message if failed else "",
    )


def result_raw(record: ResultRecord) -> results_common_pb2.ResultRaw:
    return results_common_pb2.ResultRaw(
        session_id=record.session_id,
        name=record.key,
        owner_task_id=record.owner_task_id,
        status=result_status_pb2.ResultStatus.ValueType(record.status),
        created_at=timestamp(record.created_at),
    )


def application_raw(
    record: ApplicationRecord,
) -> applications_common_pb2.ApplicationRaw:
    return applications_common_pb2.ApplicationRaw(
        name=record.name,
        version=record.version,
        namespace=record.namespace,
        service=record.service,
    )
