"""Shared state of the grid behind one interface: embedded (SQLite) or Redis."""

from __future__ import annotations

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
    EventsExpired,
    InvalidToken,
    LeaseLost,
    MissingOutputs,
    NotCompleted,
    NotFound,
    NotOwned,
    SessionCancelled,
    TaskCancelled,
)
from agent.backend._queries import (
    ApplicationQuery,
    ApplicationRecord,
    Event,
    EventKind,
    Page,
    ResultQuery,
    SessionQuery,
    Subscription,
    TaskQuery,
    Topic,
)
from agent.backend.sqlite import SqliteBackend

__all__ = [
    "ApplicationQuery",
    "ApplicationRecord",
    "Attempt",
    "Backend",
    "BackendError",
    "BlobRef",
    "Event",
    "EventKind",
    "EventsExpired",
    "InvalidToken",
    "LeaseLost",
    "MissingOutputs",
    "NewTask",
    "NotCompleted",
    "NotFound",
    "NotOwned",
    "Page",
    "ResultQuery",
    "ResultRecord",
    "ResultStatus",
    "SessionCancelled",
    "SessionQuery",
    "SessionRecord",
    "SessionStatus",
    "SqliteBackend",
    "Subscription",
    "TaskCancelled",
    "TaskQuery",
    "TaskRecord",
    "TaskRefusal",
    "TaskStatus",
    "Topic",
    "open_backend",
]

_SCHEMES = ("sqlite", "redis", "rediss")


def open_backend(url: str) -> Backend:
    """The backend that ``url`` names.

    ``sqlite://PATH[?events=N]`` opens (or creates) the state file at PATH, all
    that follows ``sqlite://`` up to a ``?``: ``sqlite:///var/lib/gridpod/state.db``
    is absolute, ``sqlite://state.db`` relative to the working directory. ``events``
    is how many events the log keeps (1,000,000 by default).

    ``redis://[:password@]host:port/db[?prefix=P&events=N]`` (``rediss://`` for
    TLS) opens the Redis backend, which needs the ``redis`` extra.
    """
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise ValueError(
            f"backend URL {url!r} has no scheme; supported schemes: "
            + ", ".join(f"{s}://" for s in _SCHEMES)
        )
    if scheme == "sqlite":
        return SqliteBackend.from_url(url)
    if scheme in ("redis", "rediss"):
        # Imported on demand: redis-py is an optional dependency.
        from agent.backend._redis import RedisBackend  # noqa: PLC0415

        return RedisBackend.from_url(url)
    raise ValueError(
        f"unsupported backend URL scheme {scheme!r} in {url!r}; supported schemes: "
        + ", ".join(f"{s}://" for s in _SCHEMES)
    )
