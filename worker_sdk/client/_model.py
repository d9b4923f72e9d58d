"""What a client submits and reads back: task specs, submitted tasks and statuses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import IntEnum

from google.protobuf import timestamp_pb2

from gridpod_api import (
    result_status_pb2,
    task_status_pb2,
    tasks_common_pb2,
)
from worker_sdk._model import DataSource, TaskOptions

__all__ = [
    "ResultStatus",
    "SubmittedTask",
    "TaskDetails",
    "TaskSpec",
    "TaskStatus",
    "TaskSummary",
]


class TaskStatus(IntEnum):
    UNSPECIFIED = task_status_pb2.TASK_STATUS_UNSPECIFIED
    CREATING = task_status_pb2.TASK_STATUS_CREATING
    SUBMITTED = task_status_pb2.TASK_STATUS_SUBMITTED
    DISPATCHED = task_status_pb2.TASK_STATUS_DISPATCHED
    PROCESSING = task_status_pb2.TASK_STATUS_PROCESSING
    PROCESSED = task_status_pb2.TASK_STATUS_PROCESSED
    COMPLETED = task_status_pb2.TASK_STATUS_COMPLETED
    ERROR = task_status_pb2.TASK_STATUS_ERROR
    TIMEOUT = task_status_pb2.TASK_STATUS_TIMEOUT
    CANCELLING = task_status_pb2.TASK_STATUS_CANCELLING
    CANCELLED = task_status_pb2.TASK_STATUS_CANCELLED

    @property
    def is_final(self) -> bool:
        """Whether the task can change no more."""
        return self in _FINAL


_FINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.CANCELLED}
)


class ResultStatus(IntEnum):
    UNSPECIFIED = result_status_pb2.RESULT_STATUS_UNSPECIFIED
    CREATED = result_status_pb2.RESULT_STATUS_CREATED
    COMPLETED = result_status_pb2.RESULT_STATUS_COMPLETED
    ABORTED = result_status_pb2.RESULT_STATUS_ABORTED
    # Only a watch reports it, for a key the session does not have.
    NOTFOUND = result_status_pb2.RESULT_STATUS_NOTFOUND


@dataclass(frozen=True)
class TaskSpec:
    """A task to submit: its payload, the results it produces, the results it needs.

    The payload is bytes-like, the path of a file (a ``str`` is a path) or an
    iterable of bytes-like chunks; files and iterables are streamed, never read
    whole. A spec with no expected output gets one: a fresh key (a uuid4), found in
    ``SubmittedTask.expected_outputs``. Keys are unique within a session.
    """

    payload: DataSource = b""
    expected_outputs: Sequence[str] = ()
    data_dependencies: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("expected_outputs", "data_dependencies"):
            keys = getattr(self, name)
            if isinstance(keys, str):
                raise TypeError(f"{name} takes a list of keys, not the string {keys!r}")
            object.__setattr__(self, name, tuple(keys))


@dataclass(frozen=True)
class SubmittedTask:
    """A task the control plane created."""

    task_id: str
    expected_outputs: tuple[str, ...]
    data_dependencies: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        """The key of the task's only expected output."""
        if len(self.expected_outputs) != 1:
            raise ValueError(
                f"task {self.task_id} has {len(self.expected_outputs)} expected "
                "outputs, not one: read expected_outputs instead"
            )
        return self.expected_outputs[0]


@dataclass(frozen=True, kw_only=True)
class TaskSummary:
    """A task as a listing shows it; ``error`` says why it failed, if it did."""

    task_id: str
    session_id: str
    status: TaskStatus
    error: str = ""
    options: TaskOptions = field(default_factory=TaskOptions)
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_proto(cls, task: tasks_common_pb2.TaskSummary) -> TaskSummary:
        return cls(
            task_id=task.id,
            session_id=task.session_id,
            status=TaskStatus(task.status),
            error=task.error,
            options=TaskOptions.from_proto(task.options),
            created_at=_time(task, "created_at"),
            started_at=_time(task, "started_at"),
            ended_at=_time(task, "ended_at"),
        )


@dataclass(frozen=True, kw_only=True)
class TaskDetails(TaskSummary):
    """Everything the control plane tells of one task."""

    expected_outputs: tuple[str, ...] = ()
    data_dependencies: tuple[str, ...] = ()
    parent_task_ids: tuple[str, ...] = ()
    # Earlier attempts of the same work, oldest first; empty for a first attempt.
    retry_of_ids: tuple[str, ...] = ()
    # The agent that holds or last held the task; empty until one acquires it.
    owner_pod_id: str = ""
    submitted_at: datetime | None = None

    @classmethod
    def from_raw(cls, task: tasks_common_pb2.TaskRaw) -> TaskDetails:
        return cls(
            task_id=task.id,
            session_id=task.session_id,
            status=TaskStatus(task.status),
            error=task.output.error or task.status_message,
            options=TaskOptions.from_proto(task.options),
            created_at=_time(task, "created_at"),
            started_at=_time(task, "started_at"),
            ended_at=_time(task, "ended_at"),
            expected_outputs=tuple(task.expected_output_ids),
            data_dependencies=tuple(task.data_dependencies),
            parent_task_ids=tuple(task.parent_task_ids),
            retry_of_ids=tuple(task.retry_of_ids),
            owner_pod_id=task.owner_pod_id,
            submitted_at=_time(task, "submitted_at"),
        )


def _time(
    message: tasks_common_pb2.TaskSummary | tasks_common_pb2.TaskRaw, name: str
) -> datetime | None:
    # Read by name: both messages have these fields, under the same names.
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=timezone.utc)
