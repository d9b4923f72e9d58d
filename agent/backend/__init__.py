"""Shared state of the grid behind one interface: embedded (SQLite) or Redis."""

from agent.backend._base import (
    Attempt,
    Backend,
    BlobRef,
    NewTask,
    ResultRecord,
    ResultStatus,
    SessionRecord,
    SessionStatus,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
)
from agent.backend._errors import (
    BackendError,
    InvalidToken,
    LeaseLost,
    MissingOutputs,
    NotCompleted,
    NotFound,
    NotOwned,
    SessionCancelled,
    TaskCancelled,
)

__all__ = [
    "Attempt",
    "Backend",
    "BackendError",
    "BlobRef",
    "InvalidToken",
    "LeaseLost",
    "MissingOutputs",
    "NewTask",
    "NotCompleted",
    "NotFound",
    "NotOwned",
    "ResultRecord",
    "ResultStatus",
    "SessionCancelled",
    "SessionRecord",
    "SessionStatus",
    "TaskCancelled",
    "TaskRecord",
    "TaskRefusal",
    "TaskStatus",
]
