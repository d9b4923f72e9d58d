"""Listings, counts and the event log of the embedded backend: their SQL, and the
connection of their own that reads them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from agent.backend._base import (
    BlobRef,
    ResultRecord,
    ResultStatus,
    SessionRecord,
    SessionStatus,
    TaskRecord,
    TaskStatus,
)
from agent.backend._errors import EventsExpired
from agent.backend._queries import (
    ApplicationQuery,
    ApplicationRecord,
    Event,
    EventKind,
    Page,
    ResultQuery,
    SessionQuery,
    TaskQuery,
)
from gridpod_api import objects_pb2

__all__ = [
    "EVENT_FIELDS",
    "EVENT_TIME_FUNCTION",
    "EVENT_TRIGGERS",
    "STARTED_EVENT",
    "Reader",
    "result_record",
    "session_record",
    "task_record",
]

_T = TypeVar("_T")

# -- events -------------------------------------------------------------------------

# The SQL function the triggers call for each event: it returns the event's time and
# lets the writer note what the event means for wake-ups. Its argument is true when
# the event queues a task.
EVENT_TIME_FUNCTION = "gridpod_event_at"

_QUEUED = f"NEW.status = {TaskStatus.SUBMITTED:d}"
# Each event's data is a JSON array, its fields in the order EVENT_FIELDS decodes.
_NEW_TASK = """json_array(NEW.task_id, NEW.status, NEW.payload_blob,
        json(NEW.expected_outputs), json(NEW.data_dependencies),
        json(NEW.retry_of_ids),
        coalesce(json_extract(NEW.retry_of_ids, '$[0]'), NEW.task_id))"""
_NEW_RESULT = "json_array(NEW.key, NEW.owner_task_id, NEW.status)"
# A staged task or result is invisible: its parent's commit makes it new.
_VISIBLE = "NEW.staged_by IS NULL"
_COMMITTED = "OLD.staged_by IS NOT NULL AND NEW.staged_by IS NULL"


def _insert_event(
    session_id: str, kind: EventKind, data: str, queued: str = "0"
) -> str:
    return f"""INSERT INTO events (session_id, kind, at, data) VALUES ({session_id},
            {kind:d}, {EVENT_TIME_FUNCTION}({queued}), {data})"""


def _trigger(name: str, on: str, kind: EventKind, data: str, queued: str = "0") -> str:
    return f"""CREATE TEMP TRIGGER {name} {on}
    BEGIN
        {_insert_event("NEW.session_id", kind, data, queued)};
    END"""


def _task_status(task_id: str, status: str) -> str:
    return f"json_array({task_id}, {status})"


# Temporary, so that they exist only on connections that registered the function;
# every writer of the file is such a connection. Within a transaction the events
# follow the statements that caused them, so a task's NEW_TASK precedes its changes.
EVENT_TRIGGERS = (
    _trigger(
        "event_new_task",
        f"AFTER INSERT ON tasks WHEN {_VISIBLE}",
        EventKind.NEW_TASK,
        _NEW_TASK,
        _QUEUED,
    ),
    _trigger(
        "event_subtask_committed",
        f"AFTER UPDATE OF staged_by ON tasks WHEN {_COMMITTED}",
        EventKind.NEW_TASK,
        _NEW_TASK,
        _QUEUED,
    ),
    _trigger(
        "event_task_status",
        f"AFTER UPDATE OF status ON tasks WHEN NEW.status != OLD.status AND {_VISIBLE}",
        EventKind.TASK_STATUS,
        _task_status("NEW.task_id", "NEW.status"),
        _QUEUED,
    ),
    _trigger(
        "event_new_result",
        f"AFTER INSERT ON results WHEN {_VISIBLE}",
        EventKind.NEW_RESULT,
        _NEW_RESULT,
    ),
    _trigger(
        "event_result_committed",
        f"AFTER UPDATE OF staged_by ON results WHEN {_COMMITTED}",
        EventKind.NEW_RESULT,
        _NEW_RESULT,
    ),
    _trigger(
        "event_result_status",
        "AFTER UPDATE OF status ON results "
        f"WHEN NEW.status != OLD.status AND {_VISIBLE}",
        EventKind.RESULT_STATUS,
        "json_array(NEW.key, NEW.status)",
    ),
    _trigger(
        "event_result_owner",
        "AFTER UPDATE OF owner_task_id ON results "
        f"WHEN NEW.owner_task_id != OLD.owner_task_id AND {_VISIBLE}",
        EventKind.RESULT_OWNER,
        "json_array(NEW.key, OLD.owner_task_id, NEW.owner_task_id)",
    ),
)


# The event that event_task_status makes for DISPATCHED -> PROCESSING, for the
# transitions that record a task's start in the UPDATE that ends its attempt.
# Parameters: the session's id and the task's.
STARTED_EVENT = _insert_event(
    "?1", EventKind.TASK_STATUS, _task_status("?2", f"{TaskStatus.PROCESSING:d}")
)


def _new_task_fields(data: list[Any]) -> dict[str, Any]:
    task_id, status, payload_id, outputs, dependencies, retry_of, origin = data
    return {
        "task_id": task_id,
        "status": TaskStatus(status),
        "payload_id": payload_id,
        "expected_outputs": tuple(outputs),
        "data_dependencies": tuple(dependencies),
        "retry_of_ids": tuple(retry_of),
        "origin_task_id": origin,
    }


def _new_result_fields(data: list[Any]) -> dict[str, Any]:
    key, owner, status = data
    return {"key": key, "owner_task_id": owner, "result_status": ResultStatus(status)}


def _owner_fields(data: list[Any]) -> dict[str, Any]:
    key, previous, owner = data
    return {"key": key, "previous_owner_task_id": previous, "owner_task_id": owner}


EVENT_FIELDS: dict[EventKind, Callable[[list[Any]], dict[str, Any]]] = {
    EventKind.NEW_TASK: _new_task_fields,
    EventKind.TASK_STATUS: lambda d: {"task_id": d[0], "status": TaskStatus(d[1])},
    EventKind.NEW_RESULT: _new_result_fields,
    EventKind.RESULT_STATUS: lambda d: {
        "key": d[0],
        "result_status": ResultStatus(d[1]),
    },
    EventKind.RESULT_OWNER: _owner_fields,
}


def _event(row: sqlite3.Row) -> Event:
    kind = EventKind(row["kind"])
    return Event(
        seq=row["seq"],
        session_id=row["session_id"],
        kind=kind,
        at=_timestamp(row["at"]),
        **EVENT_FIELDS[kind](json.loads(row["data"])),
    )


# -- records ------------------------------------------------------------------------


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _strings(value: str) -> tuple[str, ...]:
    # Most lists of a task are empty; json.loads costs more than the comparison.
    return () if value == "[]" else tuple(json.loads(value))


def session_record(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        session_id=row["session_id"],
        status=SessionStatus(row["status"]),
        default_options=objects_pb2.TaskOptions.FromString(row["default_options"]),
        partition_ids=tuple(json.loads(row["partition_ids"])),
        created_at=datetime.fromtimestamp(row["created_at"], timezone.utc),
        cancelled_at=_timestamp(row["cancelled_at"]),
        owner=row["owner"],
    )


def task_record(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        task_id=row["task_id"],
        session_id=row["session_id"],
        status=TaskStatus(row["status"]),
        options=objects_pb2.TaskOptions.FromString(row["options"]),
        payload=BlobRef(row["payload_blob"], row["payload_size"]),
        data_dependencies=_strings(row["data_dependencies"]),
        expected_outputs=_strings(row["expected_outputs"]),
        parent_task_ids=_strings(row["parent_task_ids"]),
        retry_of_ids=_strings(row["retry_of_ids"]),
        status_message=row["status_message"],
        owner_agent_id=row["owner_agent_id"],
        created_at=_timestamp(row["created_at"]),
        submitted_at=_timestamp(row["submitted_at"]),
        acquired_at=_timestamp(row["acquired_at"]),
        started_at=_timestamp(row["started_at"]),
        ended_at=_timestamp(row["ended_at"]),
    )


def result_record(row: sqlite3.Row) -> ResultRecord:
    return ResultRecord(
        session_id=row["session_id"],
        key=row["key"],
        owner_task_id=row["owner_task_id"],
        status=ResultStatus(row["status"]),
        size=row["size"],
        created_at=_timestamp(row["created_at"]),
        completed_at=_timestamp(row["completed_at"]),
    )


def _application_record(row: sqlite3.Row) -> ApplicationRecord:
    return ApplicationRecord(
        name=row["name"],
        version=row["version"],
        namespace=row["namespace"],
        service=row["service"],
    )


# -- listings -----------------------------------------------------------------------


class _Where:
    """A query's criteria as SQL conditions joined by AND, with their parameters."""

    def __init__(self, *conditions: str) -> None:
        self._conditions = list(conditions)
        self.params: list[Any] = []

    def __str__(self) -> str:
        return " AND ".join(self._conditions) or "1"

    def among(
        self, column: str, values: Collection[str | int], *, negated: bool = False
    ) -> None:
        if not values:
            return
        # One JSON parameter however many values: no limit on bound variables.
        operator = "NOT IN" if negated else "IN"
        self._conditions.append(f"{column} {operator} (SELECT value FROM json_each(?))")
        self.params.append(
            json.dumps([v if isinstance(v, str) else int(v) for v in values])
        )

    def equals(self, column: str, value: str | None) -> None:
        if value is not None:
            self._conditions.append(f"{column} = ?")
            self.params.append(value)

    def between(
        self, column: str, after: datetime | None, before: datetime | None
    ) -> None:
        # A NULL column fails both comparisons: a record lacking the time is out.
        if after is not None:
            self._conditions.append(f"{column} > ?")
            self.params.append(after.timestamp())
        if before is not None:
            self._conditions.append(f"{column} < ?")
            self.params.append(before.timestamp())


def _order(sort: str, identity: Sequence[str], descending: bool) -> str:
    """ORDER BY the sort column, then the record's identity, all one way."""
    columns = [sort, *(column for column in identity if column != sort)]
    direction = " DESC" if descending else ""
    return ", ".join(column + direction for column in columns)


def _task_criteria(query: TaskQuery) -> _Where:
    where = _Where("staged_by IS NULL")
    where.among("session_id", query.session_ids)
    where.among("task_id", query.task_ids)
    where.among("status", query.statuses)
    where.among("status", query.excluded_statuses, negated=True)
    where.between("created_at", query.created_after, query.created_before)
    where.between("started_at", query.started_after, query.started_before)
    where.between("ended_at", query.ended_after, query.ended_before)
    return where


def _session_criteria(query: SessionQuery) -> _Where:
    where = _Where()
    where.among("session_id", query.session_ids)
    where.among("owner", query.owners)
    where.among("status", query.statuses)
    where.among("status", query.excluded_statuses, negated=True)
    where.equals("application_name", query.application_name)
    where.equals("application_version", query.application_version)
    where.between("created_at", query.created_after, query.created_before)
    where.between("cancelled_at", query.cancelled_after, query.cancelled_before)
    return where


def _result_criteria(query: ResultQuery) -> _Where:
    where = _Where("staged_by IS NULL")
    where.among("session_id", query.session_ids)
    where.among("key", query.keys)
    where.among("owner_task_id", query.owner_task_ids)
    where.among("status", query.statuses)
    where.between("created_at", query.created_after, query.created_before)
    return where


def _application_criteria(query: ApplicationQuery) -> _Where:
    where = _Where("staged_by IS NULL")
    where.equals("application_name", query.name)
    where.equals("application_version", query.version)
    where.equals("application_namespace", query.namespace)
    where.equals("application_service", query.service)
    return where


_APPLICATIONS = """SELECT DISTINCT application_name AS name,
    application_version AS version, application_namespace AS namespace,
    application_service AS service
FROM tasks WHERE {where}"""
_APPLICATION_IDENTITY = ("name", "version", "namespace", "service")


class Reader:
    """A connection for listings and events, used by one thread of its own.

    Listings may scan many rows. On the writer's connection they would delay the
    transitions queued behind them, and inside a group commit hold the write lock
    while they ran; here, under the write-ahead log, each reads a snapshot without
    waiting for a writer or making one wait.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA query_only = ON")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a page and its total agree with each other."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    def _page(
        self,
        select: str,
        where: _Where,
        order: str,
        query: TaskQuery | SessionQuery | ResultQuery | ApplicationQuery,
        record: Callable[[sqlite3.Row], _T],
    ) -> Page[_T]:
        if query.offset < 0 or (query.limit is not None and query.limit < 0):
            raise ValueError(
                f"a page needs an offset and a limit of 0 or more, not offset "
                f"{query.offset} and limit {query.limit}"
            )
        limit = -1 if query.limit is None else query.limit
        selected = select.format(where=where)
        with self._snapshot() as db:
            total = db.execute(
                f"SELECT count(*) FROM ({selected})", where.params
            ).fetchone()[0]
            rows = db.execute(
                f"{selected} ORDER BY {order} LIMIT ? OFFSET ?",
                [*where.params, limit, query.offset],
            ).fetchall()
        return Page([record(row) for row in rows], total)

    def list_tasks(self, query: TaskQuery) -> Page[TaskRecord]:
        order = _order(query.sort, ("task_id",), query.descending)
        select = "SELECT * FROM tasks WHERE {where}"
        return self._page(select, _task_criteria(query), order, query, task_record)

    def count_tasks(self, query: TaskQuery) -> dict[TaskStatus, int]:
        where = _task_criteria(query)
        rows = self._db.execute(
            f"SELECT status, count(*) FROM tasks WHERE {where} GROUP BY status",
            where.params,
        ).fetchall()
        return {TaskStatus(status): count for status, count in rows}

    def list_sessions(self, query: SessionQuery) -> Page[SessionRecord]:
        order = _order(query.sort, ("session_id",), query.descending)
        select = "SELECT * FROM sessions WHERE {where}"
        where = _session_criteria(query)
        return self._page(select, where, order, query, session_record)

    def list_results(self, query: ResultQuery) -> Page[ResultRecord]:
        order = _order(query.sort, ("session_id", "key"), query.descending)
        select = "SELECT * FROM results WHERE {where}"
        return self._page(select, _result_criteria(query), order, query, result_record)

    def list_applications(self, query: ApplicationQuery) -> Page[ApplicationRecord]:
        order = _order(query.sort, _APPLICATION_IDENTITY, query.descending)
        where = _application_criteria(query)
        return self._page(_APPLICATIONS, where, order, query, _application_record)

    def read_events(
        self, after: int, session_id: str | None, limit: int
    ) -> list[Event]:
        if limit < 0:
            raise ValueError(f"a limit of events must be 0 or more, not {limit}")
        where = _Where("seq > ?")
        where.params.append(after)
        where.equals("session_id", session_id)
        with self._snapshot() as db:
            oldest = db.execute("SELECT min(seq) FROM events").fetchone()[0]
            # Sequence numbers start at 1 and have no gaps: an oldest beyond 1 means
            # that retention dropped the ones before it.
            if oldest is not None and oldest > 1 and after < oldest - 1:
                raise EventsExpired(
                    f"events after {after} are no longer kept: the oldest kept is "
                    f"{oldest}; read from last_event() on and list the current state"
                )
            rows = db.execute(
                f"SELECT * FROM events WHERE {where} ORDER BY seq LIMIT ?",
                [*where.params, limit],
            ).fetchall()
        return [_event(row) for row in rows]

    def last_event(self) -> int:
        newest = self._db.execute("SELECT max(seq) FROM events").fetchone()[0]
        return int(newest or 0)
