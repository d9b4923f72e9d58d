"""Waiting on the grid's state: throttled wake-ups, and the watch of result statuses
that WatchResults streams."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TypeVar

from agent.backend import (
    Backend,
    Event,
    EventKind,
    EventsExpired,
    ResultQuery,
    ResultRecord,
    TaskQuery,
    TaskStatus,
    Topic,
)
from agent.control._config import ControlPlaneConfig
from agent.control._visibility import Scope
from gridpod_api import result_status_pb2, submitter_common_pb2

__all__ = [
    "CompletionWait",
    "ResultWatch",
    "Wakeups",
    "wait_until",
    "watch_results",
]

_T = TypeVar("_T")
_WaitRequest = submitter_common_pb2.WaitRequest
_WatchRequest = submitter_common_pb2.WatchResultRequest
_WatchReply = submitter_common_pb2.WatchResultStream

_NOTFOUND = result_status_pb2.RESULT_STATUS_NOTFOUND
# A result only moves forward: unknown, then CREATED, then COMPLETED or ABORTED.
_RANK: dict[int, int] = {
    result_status_pb2.RESULT_STATUS_CREATED: 1,
    result_status_pb2.RESULT_STATUS_COMPLETED: 2,
    result_status_pb2.RESULT_STATUS_ABORTED: 2,
}
_FAILURES = (TaskStatus.ERROR, TaskStatus.TIMEOUT)
_RESULT_EVENTS = frozenset({EventKind.NEW_RESULT, EventKind.RESULT_STATUS})
# Keeps each reply far below gRPC's message limit, whatever the keys' length.
_IDS_PER_REPLY = 1000
_EVENTS_PER_READ = 1000
_KEYS_PER_QUERY = 500
# Wake-ups that may follow one another without a pause after a quiet time: those of
# one task dispatched, started and ended.
_BURST = 3
# How much longer than a read the pause after it lasts, at least: re-reading takes
# at most a fifth of a waiter's time.
_PAUSE_PER_READ = 4.0


class Wakeups:
    """Wake-ups on changes of the grid's state, throttled.

    While changes keep coming, they wake a reader once per requery interval on
    average; with ``patient``, once per ``requery_share`` of the time it has
    waited if that is longer, for a call whose one answer may come that much late.
    After a quiet time a few come at once, so that the few changes of one task
    reach a waiter without waiting out the interval; and a read that took long is
    followed by a pause proportionally longer, so that re-reading, however costly,
    takes a bounded share of the time.

    Open it before the first read of the state, so that a change made after that
    read ends the next wait at once.
    """

    def __init__(
        self, backend: Backend, config: ControlPlaneConfig, *, patient: bool = False
    ) -> None:
        self._subscription = backend.subscribe(Topic.STATE)
        self._config = config
        self._share = config.requery_share if patient else 0.0
        self._credit = float(_BURST)
        self._opened = self._woke = time.monotonic()
        self._read_cost = 0.0

    async def next(self) -> bool:
        """Wait for a change, or the safety poll; True if a change came."""
        now = time.monotonic()
        interval = min(
            max(self._config.requery_interval, self._share * (now - self._opened)),
            self._config.safety_poll,
        )
        self._credit = min(_BURST, self._credit + (now - self._woke) / interval)
        delay = max((1 - self._credit) * interval, _PAUSE_PER_READ * self._read_cost)
        if delay > 0:
            await asyncio.sleep(min(delay, self._config.safety_poll))
        changed = await self._subscription.wait(self._config.safety_poll)
        woke = time.monotonic()
        self._credit = min(_BURST, self._credit + (woke - now) / interval) - 1
        self._woke = woke
        self._read_cost = 0.0
        return changed

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Around the read that follows a wake-up, whose cost sets the pause after
        it."""
        started = time.monotonic()
        try:
            yield
        finally:
            self._read_cost = time.monotonic() - started

    def close(self) -> None:
        self._subscription.close()

    def __enter__(self) -> Wakeups:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def wait_until(
    backend: Backend,
    config: ControlPlaneConfig,
    check: Callable[[], Awaitable[_T | None]],
) -> _T:
    """The first outcome of ``check`` that is not None, checked after each change."""
    with Wakeups(backend, config, patient=True) as wakeups:
        while True:
            with wakeups.reading():
                outcome = await check()
            if outcome is not None:
                return outcome
            await wakeups.next()


class CompletionWait:
    """When WaitForCompletion may answer: once no selected task can change.

    A failed attempt that is retried ends ERROR (or TIMEOUT) like a final failure,
    but hands its outputs to its retry; a final failure keeps them, aborted. So only
    a failed task that still owns a result stops a wait on the first error.

    The selected tasks are counted once, then followed in the event log, which
    costs what changed rather than what the selection holds; they are counted again
    only when the log says the wait may be over, when it fell behind the log's
    retention, or on every wake-up when the filter names statuses, which the log
    cannot follow without each task's previous status.
    """

    def __init__(
        self, backend: Backend, query: TaskQuery, request: _WaitRequest
    ) -> None:
        self._backend = backend
        self._query = query
        self._on_error = request.stop_on_first_task_error
        self._on_cancellation = request.stop_on_first_task_cancellation
        self._failures_seen = 0
        self._follows = replace(query, session_ids=(), task_ids=()) == TaskQuery()
        self._sessions = frozenset(query.session_ids)
        self._task_ids = frozenset(query.task_ids)
        # The session whose events are read; None: every session's.
        self._session: str | None = None
        # The log is followed from here; None until the first count.
        self._cursor: int | None = None
        # Events up to here may already be in the last count.
        self._counted_up_to = 0
        # A lower bound on the selected tasks not final yet: an event that the count
        # may already hold only lowers it, so it reaches 0 no later than they do.
        self._unfinished = 0

    async def check(self) -> dict[TaskStatus, int] | None:
        """The count of the selected tasks by status, once the wait is over."""
        if self._cursor is not None:
            try:
                if not await self._may_be_over():
                    return None
            except EventsExpired:
                pass  # fallen behind the log's retention: count afresh
        return await self._count()

    async def _count(self) -> dict[TaskStatus, int] | None:
        # The count is taken between these two reads of the log: an event between
        # them may or may not be in it, which _may_be_over allows for.
        if self._follows and self._cursor is None:
            self._session = await self._single_session()
            # Without one session to follow, only a log of every session will do.
            self._follows = (
                self._session is not None or self._backend.events_in_one_sequence
            )
        follows, session_id = self._follows, self._session
        before = await self._backend.last_event(session_id) if follows else None
        counts = await self._backend.count_tasks(self._query)
        if await self._over(counts):
            return counts
        if before is not None:
            self._counted_up_to = await self._backend.last_event(session_id)
            self._cursor = before
            self._unfinished = sum(n for s, n in counts.items() if not s.is_final)
        return None

    async def _over(self, counts: Mapping[TaskStatus, int]) -> bool:
        if all(status.is_final for status in counts):
            return True
        if self._on_cancellation and counts.get(TaskStatus.CANCELLED):
            return True
        return self._on_error and await self._failed_for_good(counts)

    async def _may_be_over(self) -> bool:
        """Follow the log to its end; True if the wait may be over."""
        assert self._cursor is not None, "_count() starts following the log"
        ended = _Endings()
        while True:
            events = await self._backend.read_events(
                self._cursor, session_id=self._session, limit=_EVENTS_PER_READ
            )
            for event in events:
                self._apply(event, ended)
            if events:
                self._cursor = events[-1].seq
            if len(events) < _EVENTS_PER_READ:
                break
        if self._unfinished <= 0 or (self._on_cancellation and ended.cancelled):
            return True
        # A retry is created in the transition that failed the attempt before it,
        # so the log, read to its end, holds both.
        failed = [task_id for task_id in ended.failed if task_id not in ended.retried]
        return self._on_error and await self._own_results(failed)

    def _apply(self, event: Event, ended: _Endings) -> None:
        if event.kind == EventKind.NEW_TASK:
            ended.retried.update(event.retry_of_ids)
        elif event.kind != EventKind.TASK_STATUS:
            return
        if event.status is None or not self._selects(event):
            return
        if event.status.is_final:
            # A final status never changes: a task ends once. One that ended
            # before the count is subtracted twice, which only counts again sooner.
            if event.kind == EventKind.TASK_STATUS:
                self._unfinished -= 1
            ended.cancelled |= event.status == TaskStatus.CANCELLED
            if event.status in _FAILURES:
                ended.failed.append(event.task_id)
        elif event.kind == EventKind.NEW_TASK and event.seq > self._counted_up_to:
            # Created after the count for sure; one created during it is left out,
            # which only counts again sooner.
            self._unfinished += 1

    def _selects(self, event: Event) -> bool:
        return (not self._sessions or event.session_id in self._sessions) and (
            not self._task_ids or event.task_id in self._task_ids
        )

    async def _single_session(self) -> str | None:
        """The one session of the selected tasks, whose events alone need reading;
        None if they span several or the selection has no bound."""
        if len(self._sessions) == 1:
            return next(iter(self._sessions))
        if self._sessions or not self._task_ids:
            return None
        first = await self._backend.list_tasks(
            TaskQuery(task_ids=self._task_ids, limit=1)
        )
        if not first.items:
            return None
        session_id = first.items[0].session_id
        alike = await self._backend.list_tasks(
            TaskQuery(task_ids=self._task_ids, session_ids=(session_id,), limit=0)
        )
        return session_id if alike.total == first.total else None

    async def _failed_for_good(self, counts: Mapping[TaskStatus, int]) -> bool:
        failures = sum(counts.get(status, 0) for status in _FAILURES)
        # A final status never changes: the same count means the same failed tasks.
        if failures == self._failures_seen:
            return False
        self._failures_seen = failures
        query = replace(
            self._query, statuses=[s for s in _FAILURES if counts.get(s)], limit=None
        )
        failed = [
            task.task_id for task in (await self._backend.list_tasks(query)).items
        ]
        return await self._own_results(failed)

    async def _own_results(self, task_ids: Sequence[str]) -> bool:
        if not task_ids:
            return False
        owned = await self._backend.list_results(
            ResultQuery(owner_task_ids=task_ids, limit=1)
        )
        return owned.total > 0


@dataclass
class _Endings:
    """What one read of the log to its end saw end among the selected tasks."""

    cancelled: bool = False
    failed: list[str] = field(default_factory=list)
    # Attempts whose retry took their outputs over.
    retried: set[str] = field(default_factory=set)


class ResultWatch:
    """The watched result keys of one WatchResults stream and what its client knows.

    Keys carry no session: a key is looked up in every session, and a key used in
    several sessions is reported for each. A status is reported only when it moves
    a result forward, so the events that happened before a fetch, and replays after
    a re-fetch, never show a client an older status than it has seen.

    The log is followed from a cursor per session of the watched results (one for
    all of them on a backend that numbers all events in one sequence). A key that
    no session has yet is reported NOTFOUND; on a backend that numbers each
    session's events apart, it is not followed further.

    With a ``scope``, only the results of the sessions its caller sees are
    reported; another user's result is as one that does not exist.
    """

    def __init__(self, backend: Backend, scope: Scope | None = None) -> None:
        self._backend = backend
        self._scope = scope
        # Key -> the statuses its updates are sent for; empty: every status.
        self._watched: dict[str, frozenset[int]] = {}
        self._known: dict[tuple[str, str], int] = {}
        # Session (None: every session) -> the newest event read of it.
        self._cursors: dict[str | None, int] = {}
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    async def add(self, request: _WatchRequest) -> list[_WatchReply]:
        """Watch the request's keys; their current statuses, as the first reply."""
        if not self._started and self._backend.events_in_one_sequence:
            # Taken before the fetch: what changes after it is read from the log.
            self._cursors[None] = await self._backend.last_event()
        self._started = True
        keys = list(dict.fromkeys(request.result_ids))
        for key in keys:
            self._watched[key] = frozenset(request.watch_statuses)
        records = await self._fetch(keys)
        if await self._follow_sessions_of(records):
            # What changed between the fetch and the new cursors is fetched again.
            records = await self._fetch(keys)
        statuses: list[tuple[str, int]] = []
        for record in records:
            self._observe(record.session_id, record.key, int(record.status))
            statuses.append((record.key, int(record.status)))
        found = {key for key, _ in statuses}
        statuses += [(key, _NOTFOUND) for key in keys if key not in found]
        wanted = set(request.fetch_statuses)
        return _grouped((k, s) for k, s in statuses if not wanted or s in wanted)

    async def _follow_sessions_of(self, records: Iterable[ResultRecord]) -> bool:
        """Start following the sessions of ``records`` not followed yet; True if
        there were any."""
        if self._backend.events_in_one_sequence:
            return False
        new = {r.session_id for r in records if r.session_id not in self._cursors}
        for session_id in new:
            self._cursors[session_id] = await self._backend.last_event(session_id)
        return bool(new)

    async def updates(self) -> list[_WatchReply]:
        """What moved forward among the watched results since the last call."""
        assert self._started, "add() starts the watch"
        changes: list[tuple[str, int]] = []
        try:
            for session_id in list(self._cursors):
                changes += await self._read_log(session_id)
        except EventsExpired:
            # Fallen behind the log's retention: the current statuses say it all.
            return _grouped(changes + await self._refetch())
        return _grouped(changes)

    async def _read_log(self, session_id: str | None) -> list[tuple[str, int]]:
        changes: list[tuple[str, int]] = []
        while True:
            events = await self._backend.read_events(
                self._cursors[session_id],
                session_id=session_id,
                limit=_EVENTS_PER_READ,
            )
            changes += self._changes(await self._visible(events))
            if events:
                self._cursors[session_id] = events[-1].seq
            if len(events) < _EVENTS_PER_READ:
                return changes

    async def _visible(self, events: list[Event]) -> list[Event]:
        """The events of the sessions the caller sees."""
        if self._scope is None or self._scope.sees_all:
            return events
        sessions = await self._scope.visible({event.session_id for event in events})
        return [event for event in events if event.session_id in sessions]

    def _changes(self, events: Iterable[Event]) -> list[tuple[str, int]]:
        changes = []
        for event in events:
            if (
                event.kind in _RESULT_EVENTS
                and event.key in self._watched
                and event.result_status is not None
            ):
                status = int(event.result_status)
                if self._observe(event.session_id, event.key, status):
                    changes.append((event.key, status))
        return [(key, s) for key, s in changes if self._wanted(key, s)]

    async def _refetch(self) -> list[tuple[str, int]]:
        for session_id in self._cursors:
            self._cursors[session_id] = await self._backend.last_event(session_id)
        changes = []
        for record in await self._fetch(list(self._watched)):
            status = int(record.status)
            if self._observe(record.session_id, record.key, status):
                changes.append((record.key, status))
        return [(key, s) for key, s in changes if self._wanted(key, s)]

    async def _fetch(self, keys: Sequence[str]) -> list[ResultRecord]:
        records: list[ResultRecord] = []
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            query = ResultQuery(keys=keys[start : start + _KEYS_PER_QUERY])
            scoped = query if self._scope is None else await self._scope.results(query)
            if scoped is None:
                break  # the caller sees no session at all
            records += (await self._backend.list_results(scoped)).items
        return records

    def _observe(self, session_id: str, key: str, status: int) -> bool:
        """Record the status; True if it moves the result forward."""
        known = self._known.get((session_id, key))
        if known is not None and _RANK.get(status, 0) <= _RANK.get(known, 0):
            return False
        self._known[session_id, key] = status
        return True

    def _wanted(self, key: str, status: int) -> bool:
        statuses = self._watched[key]
        return not statuses or status in statuses


def _grouped(statuses: Iterable[tuple[str, int]]) -> list[_WatchReply]:
    """One reply per status, in order of first appearance, chunked when long."""
    by_status: dict[int, list[str]] = {}
    for key, status in statuses:
        by_status.setdefault(status, []).append(key)
    return [
        _WatchReply(
            status=result_status_pb2.ResultStatus.ValueType(status),
            result_ids=keys[start : start + _IDS_PER_REPLY],
        )
        for status, keys in by_status.items()
        for start in range(0, len(keys), _IDS_PER_REPLY)
    ]


async def watch_results(
    backend: Backend,
    config: ControlPlaneConfig,
    requests: AsyncIterator[_WatchRequest],
    scope: Scope | None = None,
) -> AsyncIterator[_WatchReply]:
    """The replies of one WatchResults stream, until the client's half-close;
    with a ``scope``, of the sessions its caller sees only."""
    watch = ResultWatch(backend, scope)
    reading: asyncio.Future[_WatchRequest | None] = asyncio.ensure_future(
        anext(requests, None)
    )
    waking: asyncio.Future[bool] | None = None
    with Wakeups(backend, config) as wakeups:
        try:
            while True:
                if waking is None and watch.started:
                    waking = asyncio.ensure_future(wakeups.next())
                pending = {f for f in (reading, waking) if f is not None}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if reading.done():
                    request = reading.result()
                    if request is None:
                        return
                    for reply in await watch.add(request):
                        yield reply
                    reading = asyncio.ensure_future(anext(requests, None))
                if waking is not None and waking.done():
                    waking.result()
                    waking = None
                    with wakeups.reading():
                        replies = await watch.updates()
                    for reply in replies:
                        yield reply
        finally:
            for future in (reading, waking):
                if future is not None:
                    future.cancel()
