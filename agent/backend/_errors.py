"""Errors a backend raises; every one derives from ``agent.AgentError``."""

from __future__ import annotations

from agent._errors import AgentError

__all__ = [
    "BackendError",
    "EventsExpired",
    "InvalidToken",
    "LeaseLost",
    "MissingOutputs",
    "NotCompleted",
    "NotFound",
    "NotOwned",
    "SessionCancelled",
    "TaskCancelled",
]


class BackendError(AgentError):
    """Base of the backend's errors."""


class EventsExpired(BackendError):
    """The events asked for are older than the backend keeps."""


class NotFound(BackendError):
    """No session, task, result, blob or resource of that id."""


class SessionCancelled(BackendError):
    """The session is cancelled: it takes no new tasks."""


class LeaseLost(BackendError):
    """The attempt is no longer the task's: its lease expired or it already ended."""


class TaskCancelled(BackendError):
    """The task was cancelled while the attempt ran."""


class InvalidToken(BackendError):
    """No running attempt has this communication token."""


class NotOwned(BackendError):
    """The attempt's task does not own this result key."""


class NotCompleted(BackendError):
    """The result exists but has no data yet (or was aborted)."""


class MissingOutputs(BackendError):
    """An output the task owns was neither sent nor delegated."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"expected outputs neither sent nor delegated: {keys}")
        self.keys = keys
