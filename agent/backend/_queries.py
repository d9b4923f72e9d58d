"""What a control plane asks of the backend: listings, counts, events, wake-ups.

A query names what to keep (every criterion set must hold: they combine with AND),
how to sort and which page to return. An empty collection or ``None`` puts no
constraint. Timestamps compare strictly (``created_after=t`` keeps what was created
after ``t``); a record that lacks the timestamp (a task never started) fails every
bound on it.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from types import TracebackType
from typing import Generic, Literal, TypeVar

from agent.backend._base import ResultStatus, SessionStatus, TaskStatus

__all__ = [
    "ApplicationQuery",
    "ApplicationRecord",
    "Event",
    "EventKind",
    "Page",
    "ResultQuery",
    "SessionQuery",
    "Subscription",
    "TaskQuery",
    "Topic",
]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of a listing and how many records match in all."""

    items: list[_T]
    total: int


@dataclass(frozen=True, kw_only=True)
class _Paging:
    # Ties on the sort key are broken by the record's id, so pages never overlap. A
    # record lacking the sorted timestamp counts as older than every one that has it.
    descending: bool = False
    offset: int = 0
    # None: every record from ``offset`` on.
    limit: int | None = None


TaskSort = Literal[
    "task_id", "session_id", "status", "created_at", "started_at", "ended_at"
]


@dataclass(frozen=True, kw_only=True)
class TaskQuery(_Paging):
    session_ids: Collection[str] = ()
    task_ids: Collection[str] = ()
    statuses: Collection[TaskStatus] = ()
    excluded_statuses: Collection[TaskStatus] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    ended_after: datetime | None = None
    ended_before: datetime | None = None
    sort: TaskSort = "created_at"


SessionSort = Literal["session_id", "status", "created_at", "cancelled_at"]


@dataclass(frozen=True, kw_only=True)
class SessionQuery(_Paging):
    session_ids: Collection[str] = ()
    # The users who created them.
    owners: Collection[str] = ()
    statuses: Collection[SessionStatus] = ()
    excluded_statuses: Collection[SessionStatus] = ()
    # Compared with the session's default task options.
    application_name: str | None = None
    application_version: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    cancelled_after: datetime | None = None
    cancelled_before: datetime | None = None
    sort: SessionSort = "created_at"


ResultSort = Literal["session_id", "key", "owner_task_id", "status", "created_at"]


@dataclass(frozen=True, kw_only=True)
class ResultQuery(_Paging):
    session_ids: Collection[str] = ()
    keys: Collection[str] = ()
    owner_task_ids: Collection[str] = ()
    statuses: Collection[ResultStatus] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: ResultSort = "created_at"


@dataclass(frozen=True)
class ApplicationRecord:
    """An application: the distinct identity that task options give to tasks."""

    name: str
    version: str
    namespace: str
    service: str


ApplicationSort = Literal["name", "version", "namespace", "service"]


@dataclass(frozen=True, kw_only=True)
class ApplicationQuery(_Paging):
    # Exact matches on the tasks' options.
    name: str | None = None
    version: str | None = None
    namespace: str | None = None
    service: str | None = None
    sort: ApplicationSort = "name"


class EventKind(IntEnum):
    NEW_TASK = 1
    TASK_STATUS = 2
    NEW_RESULT = 3
    RESULT_STATUS = 4
    RESULT_OWNER = 5


@dataclass(frozen=True, kw_only=True)
class Event:
    """One change to a task or a result, in the order the backend committed them.

    ``seq`` grows with every event of the backend (across sessions). Which fields
    are set depends on ``kind``:

    - NEW_TASK: task_id, status, payload_id, expected_outputs, data_dependencies,
      retry_of_ids, origin_task_id (the first attempt's id; its own for a first
      attempt).
    - TASK_STATUS: task_id, status.
    - NEW_RESULT: key, owner_task_id, result_status.
    - RESULT_STATUS: key, result_status.
    - RESULT_OWNER: key, previous_owner_task_id, owner_task_id.

    A task created and staged by a running attempt has its NEW_TASK event when that
    attempt commits, not before (and never if it does not); that event says
    CREATING (CANCELLED if it was cancelled meanwhile), and TASK_STATUS events of
    the same commit say what became of it. Within one transition, a task's
    NEW_TASK comes before the NEW_RESULT of its outputs and before any other event
    naming it, and a committing attempt's results are COMPLETED before its task:
    whoever sees the task COMPLETED has seen its results.
    """

    seq: int
    session_id: str
    kind: EventKind
    task_id: str = ""
    status: TaskStatus | None = None
    payload_id: str = ""
    origin_task_id: str = ""
    expected_outputs: tuple[str, ...] = ()
    data_dependencies: tuple[str, ...] = ()
    retry_of_ids: tuple[str, ...] = ()
    key: str = ""
    result_status: ResultStatus | None = None
    owner_task_id: str = ""
    previous_owner_task_id: str = ""
    # When the change was committed.
    at: datetime | None = field(default=None, compare=False)


class Topic(IntEnum):
    """What a wake-up is about; flags, so one wait can cover several."""

    # A task became SUBMITTED: an idle agent should try to acquire.
    QUEUE = 1
    # Anything changed: a task or result created, its status or owner (so a task
    # queued wakes STATE too), a session created or cancelled.
    STATE = 2
    ANY = 3


class Subscription(abc.ABC):
    """Wake-ups for changes committed by any process sharing the backend.

    Changes are coalesced: one ``wait`` may end for many commits, and a commit made
    between two waits ends the next one at once. A wake-up says only that something
    of the topics may have changed: read the state again to know what. Where
    wake-ups travel asynchronously (Redis pub/sub), one for a commit made just
    before the subscription may still reach it.
    """

    @abc.abstractmethod
    async def wait(self, timeout: float | None = None) -> bool:
        """True once a change came after the subscription or the previous wait,
        False if ``timeout`` seconds passed first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop receiving wake-ups; closing twice is harmless."""

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
