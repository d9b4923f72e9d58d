"""The backend interface: sessions, tasks, results, blobs and the queue.

Every method that changes state is one atomic transition: either all of it is stored
or none of it, whatever process calls it and whenever that process dies. Agents and
control planes on one host (embedded backend) or on many (Redis backend) share one
backend and coordinate only through it.

Life cycle of a task, as stored here:

    CREATING    waiting for data dependencies, or a subtask not yet committed
    SUBMITTED   queued in its partition
    DISPATCHED  acquired by an agent, under a lease
    PROCESSING  its worker is running it
    COMPLETED | ERROR | TIMEOUT | CANCELLED   final

A failed attempt that still has retries ends ERROR (or TIMEOUT) and a new task takes
over its outputs, with ``retry_of_ids`` naming every earlier attempt.
"""

from __future__ import annotations

import abc
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from typing import TYPE_CHECKING

from gridpod_api import (
    objects_pb2,
    result_status_pb2,
    session_status_pb2,
    task_status_pb2,
)

if TYPE_CHECKING:
    from agent.backend._queries import (
        ApplicationQuery,
        ApplicationRecord,
        Event,
        Page,
        ResultQuery,
        SessionQuery,
        Subscription,
        TaskQuery,
        Topic,
    )

__all__ = [
    "Attempt",
    "Backend",
    "BlobRef",
    "NewTask",
    "ResultRecord",
    "ResultStatus",
    "SessionRecord",
    "SessionStatus",
    "TaskRecord",
    "TaskRefusal",
    "TaskStatus",
]


class TaskStatus(IntEnum):
    CREATING = task_status_pb2.TASK_STATUS_CREATING
    SUBMITTED = task_status_pb2.TASK_STATUS_SUBMITTED
    DISPATCHED = task_status_pb2.TASK_STATUS_DISPATCHED
    PROCESSING = task_status_pb2.TASK_STATUS_PROCESSING
    COMPLETED = task_status_pb2.TASK_STATUS_COMPLETED
    ERROR = task_status_pb2.TASK_STATUS_ERROR
    TIMEOUT = task_status_pb2.TASK_STATUS_TIMEOUT
    CANCELLING = task_status_pb2.TASK_STATUS_CANCELLING
    CANCELLED = task_status_pb2.TASK_STATUS_CANCELLED

    @property
    def is_final(self) -> bool:
        return self in _FINAL_TASK_STATUSES


_FINAL_TASK_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.CANCELLED}
)


class ResultStatus(IntEnum):
    CREATED = result_status_pb2.RESULT_STATUS_CREATED
    COMPLETED = result_status_pb2.RESULT_STATUS_COMPLETED
    ABORTED = result_status_pb2.RESULT_STATUS_ABORTED


class SessionStatus(IntEnum):
    RUNNING = session_status_pb2.SESSION_STATUS_RUNNING
    CANCELLED = session_status_pb2.SESSION_STATUS_CANCELLED


@dataclass(frozen=True)
class BlobRef:
    """A stored blob: a payload, a result's data or a resource."""

    blob_id: str
    size: int


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    status: SessionStatus
    # Defaults for every task of the session, merged field by field under the task's.
    default_options: objects_pb2.TaskOptions
    partition_ids: tuple[str, ...]
    created_at: datetime
    cancelled_at: datetime | None = None
    # The user who created it, when authentication names one; "" otherwise.
    owner: str = ""


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    session_id: str
    status: TaskStatus
    # Merged over the session's defaults when the task was created.
    options: objects_pb2.TaskOptions
    payload: BlobRef
    data_dependencies: tuple[str, ...]
    expected_outputs: tuple[str, ...]
    parent_task_ids: tuple[str, ...] = ()
    retry_of_ids: tuple[str, ...] = ()
    status_message: str = ""
    owner_agent_id: str = ""
    created_at: datetime | None = None
    submitted_at: datetime | None = None
    acquired_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def attempt(self) -> int:
        """1 for a first attempt, 2 for its first retry, and so on."""
        return len(self.retry_of_ids) + 1


@dataclass(frozen=True)
class ResultRecord:
    session_id: str
    key: str
    owner_task_id: str
    status: ResultStatus
    size: int = 0
    created_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True)
class NewTask:
    """A task to create: its payload (already stored) and its result keys."""

    payload: BlobRef
    expected_outputs: Sequence[str]
    data_dependencies: Sequence[str] = ()


@dataclass(frozen=True)
class TaskRefusal:
    """Why one task of a creation request was not created."""

    index: int
    reason: str


@dataclass(frozen=True)
class Attempt:
    """One agent's hold on one task; once its lease expires, it may be taken over."""

    task: TaskRecord
    agent_id: str
    # Unguessable; the worker's communication token for this attempt.
    token: str
    lease_expires_at: datetime
    # The payload itself, when acquire was asked to bring payloads this small.
    payload_data: bytes | None = field(default=None, repr=False, compare=False)


class Backend(abc.ABC):
    """What agents and control planes need from shared state."""

    # Whether events of every session share one sequence, so that one cursor
    # follows them all (``read_events`` without a session).
    events_in_one_sequence = False
    # The most tasks an agent should ask ``acquire_many`` for at once. A backend
    # that takes them in one transition, which spends less per task than one
    # transition each, sets more than 1; with 1 the agent asks as room appears.
    acquire_batch = 1

    # -- life of the backend ------------------------------------------------------

    async def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Release connections; the stored state stays."""

    # -- sessions -----------------------------------------------------------------

    @abc.abstractmethod
    async def create_session(
        self,
        default_options: objects_pb2.TaskOptions,
        partition_ids: Sequence[str],
        *,
        owner: str = "",
    ) -> SessionRecord:
        """A new RUNNING session, created by the user ``owner``."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord:
        """Raises ``NotFound``."""

    @abc.abstractmethod
    async def cancel_session(self, session_id: str) -> SessionRecord:
        """Mark it CANCELLED and cancel every task of it that is not final.

        Raises ``NotFound``; cancelling a cancelled session changes nothing.
        """

    # -- blobs --------------------------------------------------------------------

    @abc.abstractmethod
    async def write_blob(
        self, chunks: AsyncIterable[bytes], *, session_id: str | None = None
    ) -> BlobRef:
        """Store the chunks as one blob, never holding it whole.

        ``session_id`` names the session whose task or result will reference the
        blob, when the caller knows it: a distributed backend stores the blob
        beside the session's records, so that its transitions reach it.
        """

    @abc.abstractmethod
    def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        """The blob's chunks as written. Raises ``NotFound`` when iterated.

        A blob is immutable; one that nothing references any more (a discarded staged
        value or subtask payload, a replaced resource) may be deleted.
        """

    @abc.abstractmethod
    async def discard_blobs(self, blob_ids: Iterable[str]) -> None:
        """Delete those of the blobs that nothing references: the payloads of tasks
        that were refused, or of a submission that broke off. A referenced blob, or
        an unknown id, is left alone."""

    # -- creating tasks -----------------------------------------------------------

    @abc.abstractmethod
    async def submit_tasks(
        self,
        session_id: str,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None = None,
    ) -> list[TaskRecord | TaskRefusal]:
        """Create tasks of a client, one answer per task, in order.

        ``options`` are merged over the session's defaults field by field. Each
        expected output becomes a result of the session owned by its task; a key
        that already exists in the session refuses that task. Each data dependency
        must be a result of the session or an expected output of an earlier task of
        the same request; otherwise that task is refused. A task whose dependencies
        are all COMPLETED is SUBMITTED (queued), otherwise it stays CREATING until
        they are; one with an ABORTED dependency is created ERROR, its outputs
        ABORTED. A task is also refused when it has no expected output, lists one
        twice, depends on its own output, names an unknown payload blob, or when the
        merged partition is not one of the session's (if it lists any; an empty
        partition takes the session's first). Raises ``NotFound`` for an unknown
        session and ``SessionCancelled`` for a cancelled one; a refused task stores
        nothing.
        """

    # -- the agent's side ---------------------------------------------------------

    @abc.abstractmethod
    async def acquire(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        *,
        payload_up_to: int = 0,
    ) -> Attempt | None:
        """Take the next SUBMITTED task of the partition, or None if there is none.

        A payload of at most ``payload_up_to`` bytes comes with the attempt
        (``payload_data``), sparing the caller a read of its blob.

        Highest priority first, then oldest. The task becomes DISPATCHED, owned by
        ``agent_id`` until the lease expires, and the attempt gets a fresh token.
        """

    async def acquire_many(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        limit: int,
        *,
        payload_up_to: int = 0,
    ) -> list[Attempt]:
        """Take up to ``limit`` tasks as ``acquire`` would, one after the other;
        fewer, or none, when the partition's queue runs out.

        A backend may take them in one transition, which costs less than
        ``limit`` of them. Raises ``ValueError`` for a limit below 1.
        """
        check_batch_size(limit)
        attempts: list[Attempt] = []
        while len(attempts) < limit:
            attempt = await self.acquire(
                agent_id, partition_id, lease, payload_up_to=payload_up_to
            )
            if attempt is None:
                break
            attempts.append(attempt)
        return attempts

    @abc.abstractmethod
    async def start(self, attempt: Attempt, at: datetime | None = None) -> None:
        """DISPATCHED -> PROCESSING, started ``at`` (now by default). Raises
        ``LeaseLost``, or ``TaskCancelled``.

        The agent calls it for a task still running a moment after the worker got
        its first request; a shorter task's start goes with the transition that
        ends it (``complete`` or ``fail`` with ``started_at``).
        """

    @abc.abstractmethod
    async def renew(self, attempt: Attempt, lease: timedelta) -> Attempt:
        """Extend the lease. Raises ``LeaseLost``, or ``TaskCancelled`` when the
        task was cancelled meanwhile (the agent must stop the attempt)."""

    @abc.abstractmethod
    async def stage_result(self, attempt: Attempt, key: str, data: BlobRef) -> None:
        """Keep ``data`` as the value of ``key`` if the attempt commits.

        Raises ``NotOwned`` unless the attempt's task owns ``key`` now (a key it
        delegated to a subtask is no longer its own), ``NotFound`` for an unknown
        blob, ``LeaseLost`` and ``TaskCancelled`` as ``complete``. Staging a key
        again replaces the earlier value.
        """

    async def stage_result_data(
        self, attempt: Attempt, key: str, chunks: AsyncIterable[bytes]
    ) -> BlobRef:
        """Store ``chunks`` and stage them as the value of ``key``, as ``stage_result``.

        A backend may do both in one step; this default writes the blob first.
        """
        blob = await self.write_blob(chunks)
        await self.stage_result(attempt, key, blob)
        return blob

    @abc.abstractmethod
    async def stage_subtasks(
        self,
        attempt: Attempt,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None = None,
    ) -> list[TaskRecord | TaskRefusal]:
        """Create subtasks that become visible only if the attempt commits.

        As ``submit_tasks``, with these differences: an expected output that the
        parent owns and has not sent is delegated (its ownership moves to the
        subtask at commit); a dependency may also be a result created by an earlier
        subtask of the same attempt; the subtasks stay CREATING until the commit,
        which queues them, or fails those whose dependency was aborted meanwhile.
        Staged subtasks and the results they create are invisible to ``acquire``,
        ``get_result`` and ``read_result`` until then, and are deleted if the
        attempt does not commit.
        """

    @abc.abstractmethod
    async def complete(
        self,
        attempt: Attempt,
        results: Mapping[str, bytes] | None = None,
        *,
        started_at: datetime | None = None,
    ) -> None:
        """Commit the attempt in one transaction; ``get_task`` reads the outcome.

        ``started_at``: the attempt started then but ``start`` was not called; it
        is recorded by the commit's transaction (the PROCESSING event comes before
        the others), which spares a short task a transaction of its own. A refused
        commit may leave it recorded; recording it again changes nothing.

        ``results`` are values the caller held rather than staged: they are
        staged first, in the same transaction, under the same ownership rule
        (``NotOwned`` commits nothing).

        Staged results become COMPLETED; delegated outputs change owner; staged
        subtasks are SUBMITTED or wait for their dependencies; the task becomes
        COMPLETED; tasks that waited on the new results are queued when nothing
        else is missing. Raises ``LeaseLost`` when the attempt is no longer the
        task's (a late commit), ``TaskCancelled`` when the task was cancelled, and
        ``MissingOutputs`` when an output the task owns is neither staged nor
        delegated; in every case nothing is committed.
        """

    @abc.abstractmethod
    async def fail(
        self,
        attempt: Attempt,
        error: str,
        status: TaskStatus = TaskStatus.ERROR,
        *,
        started_at: datetime | None = None,
    ) -> TaskRecord:
        """End the attempt as ERROR or TIMEOUT, discarding what it staged.

        ``started_at`` is recorded first, as ``complete`` does.

        If the task has retries left, a new task with the same payload, data
        dependencies and outputs is queued; it is returned. Otherwise its outputs
        are ABORTED, and so, transitively, are the tasks that depend on them (ERROR,
        with a message naming the aborted dependency); the failed task is returned.
        Raises ``LeaseLost`` for an attempt that is no longer the task's, and
        ``TaskCancelled``, changing nothing, when the task was cancelled (end the
        attempt with ``mark_cancelled``).
        """

    @abc.abstractmethod
    async def release(self, attempt: Attempt) -> None:
        """Put the task back in the queue without consuming a retry.

        What the attempt staged is discarded. A task cancelled meanwhile ends
        CANCELLED instead. Raises ``LeaseLost``.
        """

    @abc.abstractmethod
    async def recover_expired(self, now: datetime | None = None) -> list[str]:
        """Fail every attempt whose lease has expired, as ``fail`` does.

        An attempt stays valid after its lease expires until this ends it. A task
        cancelled meanwhile ends CANCELLED. Returns the ids of the tasks that were
        recovered.
        """

    # -- reading and cancelling ---------------------------------------------------

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord:
        """Raises ``NotFound``."""

    @abc.abstractmethod
    async def get_result(self, session_id: str, key: str) -> ResultRecord:
        """Raises ``NotFound``."""

    @abc.abstractmethod
    def read_result(self, session_id: str, key: str) -> AsyncIterator[bytes]:
        """The data of a COMPLETED result. Raises ``NotFound`` or ``NotCompleted``."""

    @abc.abstractmethod
    async def cancel_tasks(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """Cancel tasks that are not final; their outputs are ABORTED.

        A DISPATCHED or PROCESSING task becomes CANCELLING: its agent sees it on
        its next renewal, stops the attempt, and the task ends CANCELLED. Others
        become CANCELLED at once. Final tasks are left as they are. Returns the
        records after cancellation, in order. Raises ``NotFound`` for an unknown
        id, before cancelling anything.
        """

    @abc.abstractmethod
    async def mark_cancelled(self, attempt: Attempt) -> TaskRecord:
        """CANCELLING -> CANCELLED once the agent has stopped the attempt.

        What the attempt staged is discarded. Raises ``LeaseLost``, and
        ``BackendError`` when the task is not being cancelled.
        """

    # -- resources ----------------------------------------------------------------

    @abc.abstractmethod
    async def put_resource(self, key: str, data: BlobRef) -> None:
        """Set or replace the resource blob ``key``."""

    @abc.abstractmethod
    def read_resource(self, key: str) -> AsyncIterator[bytes]:
        """Raises ``NotFound`` when iterated."""

    @abc.abstractmethod
    async def list_resources(self) -> dict[str, int]:
        """Every resource key with its size in bytes."""

    @abc.abstractmethod
    async def delete_resource(self, key: str) -> None:
        """Raises ``NotFound``."""

    # -- listings, events and wake-ups (see ``_queries``) ---------------------------

    @abc.abstractmethod
    async def list_tasks(self, query: TaskQuery) -> Page[TaskRecord]:
        """The page of tasks that ``query`` selects, sorted as it says.

        Staged subtasks (not yet committed by their parent) are not listed.
        """

    @abc.abstractmethod
    async def count_tasks(self, query: TaskQuery) -> dict[TaskStatus, int]:
        """How many tasks ``query`` selects, by status; statuses with none are
        left out. The query's sort and page are ignored."""

    @abc.abstractmethod
    async def list_sessions(self, query: SessionQuery) -> Page[SessionRecord]:
        """The page of sessions that ``query`` selects."""

    @abc.abstractmethod
    async def list_results(self, query: ResultQuery) -> Page[ResultRecord]:
        """The page of results that ``query`` selects; staged ones are not listed."""

    @abc.abstractmethod
    async def list_applications(
        self, query: ApplicationQuery
    ) -> Page[ApplicationRecord]:
        """The distinct applications named by the options of committed tasks."""

    @abc.abstractmethod
    async def read_events(
        self, after: int, *, session_id: str | None = None, limit: int = 1000
    ) -> list[Event]:
        """Events with ``seq`` greater than ``after``, oldest first, at most ``limit``.

        A backend may number each session's events on its own (Redis does): name
        the session to read them anywhere; ``None`` reads every session's events,
        where the backend numbers them all in one sequence (SQLite), and raises
        ``BackendError`` elsewhere.

        Every transition stores its events in its own transaction, so they are
        never seen before the change and never lost with it. Raises
        ``EventsExpired`` when events after ``after`` were already dropped by the
        backend's retention.
        """

    @abc.abstractmethod
    async def last_event(self, session_id: str | None = None) -> int:
        """A cursor to read from to see only what happens next: no event (of the
        session, if named) committed before the call has a greater ``seq``, every
        one committed after it has; 0 when there is none. ``None`` is only for
        backends that number all events in one sequence, as ``read_events``."""

    @abc.abstractmethod
    def subscribe(self, topics: Topic | None = None) -> Subscription:
        """Wake-ups for the topics (every one by default), from commits of every
        process of the backend."""


def check_batch_size(limit: int) -> None:
    """Refuse a batch that asks for nothing."""
    if limit < 1:
        raise ValueError(f"the limit of a batch must be at least 1, not {limit}")
