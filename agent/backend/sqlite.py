"""The embedded backend: one SQLite file shared by the agents and control planes of
a host.

Open it with ``open_backend("sqlite:///var/lib/gridpod/state.db")``: the path is all
that follows ``sqlite://``, so ``sqlite:///abs/state.db`` names ``/abs/state.db`` and
``sqlite://state.db`` a file relative to the working directory, up to a ``?``:
``sqlite://state.db?events=N`` keeps the newest N events (a million by default). The
file and its schema are created on first use, and a file of an earlier schema
version is upgraded; any number of processes of the host may open it. Stop the
processes of an earlier version first: those still running would not see the values
that version 4 keeps in their results' rows.

Every transition is one ``BEGIN IMMEDIATE`` transaction. SQLite admits one writer at a
time across processes, so two agents never take the same task, and a process that
dies mid-transition leaves nothing of it. The journal is a write-ahead log (readers
never wait for the writer) with ``synchronous=NORMAL``: a power cut may lose the last
transitions but never corrupts the file. A writer that finds the file locked waits up
to ``busy_timeout``. Each backend instance has one connection and a thread of its
own. A short transition runs right on the event loop when the connection is idle,
nothing is queued before it and no other process holds the write lock (it gives up
at once rather than wait); any other call is one hop to the thread. Calls that queue
up there while it is busy share one transaction, each in a savepoint of its own, and
their callers hear of the outcome only once that transaction has committed.
Listings and reads of the event log use a second connection, on a thread of their
own, opened by the first of them.

Once a transaction has committed, the thread that committed it wakes the
subscribers of every process (``agent.backend._notify``, over sockets beside the
file): QUEUE if it queued a task, STATE if it stored an event or created or
cancelled a session.

An attempt stays its task's until it ends or until ``recover_expired`` ends it: a
lapsed lease only allows another process to take the task over, so a slow agent's
commit is still accepted if nobody has.

Schema (``PRAGMA user_version`` = 4); timestamps are Unix seconds, lists are JSON:

``sessions``
    One row per session: status, default options (a serialized ``TaskOptions``, and
    the application's name and version from them as columns for listings) and the
    partitions its tasks may run in.
``blobs``, ``blob_chunks``
    A blob is a ``blobs`` row (its size and chunk count, NULL while it is being
    written) and its chunks, one row each under the primary key (blob, seq). Chunks
    are inserted as they arrive, about 1 MiB per transaction, and read back lazily in
    batches of the same size.
``tasks``
    One row per task; a retry is a new row. Besides the record's fields it keeps the
    merged options' partition, priority, retry budget and application (name,
    version, namespace, service) as columns, the count of data dependencies not yet
    completed (``missing_deps``), the lease (``token``, ``owner_agent_id``,
    ``lease_expires_at``), and ``staged_by``: the id of the parent whose running
    attempt created it, until that attempt commits. Indexes:
    ``tasks_queue`` on (partition, priority DESC, created) for SUBMITTED rows only
    serves ``acquire``; ``tasks_leased`` on the lease expiry of leased rows serves
    ``recover_expired``; ``tasks_staged`` finds an attempt's subtasks at commit or
    discard; ``tasks_by_session`` serves ``cancel_session``, listings and counts of
    a session; ``tasks_by_application`` serves
    ``list_applications``; ``tasks_by_payload`` tells whether a blob is still
    referenced.
``results``
    One row per result, keyed by (session, key): its owner task, status, its value
    (a blob, or ``data`` in the row itself for a value of at most 1 KiB handed to
    the commit), ``pending_owner`` (a subtask the owner delegated it to, effective
    when the owner's attempt commits) and ``staged_by`` (as in ``tasks``, for a
    result that a staged subtask created). Indexes: ``results_by_owner`` (the
    outputs a task must produce, abort or hand to its retry), ``results_staged``
    and ``results_by_blob``.
``dependencies``
    One row per (session, key, task) while ``task`` waits for result ``key``. When a
    result completes, its rows are deleted and exactly those tasks' ``missing_deps``
    drop; a task reaching zero is queued in the same transaction. When a result is
    aborted, the waiting tasks fail instead. Nothing polls.
``staged_results``
    The values an attempt sent before its commit, keyed by (task, key); moved into
    ``results`` by the commit, deleted (with their blobs) when the attempt fails or
    is released. Values handed to the commit itself go straight to ``results``.
``resources``
    Operator-provisioned blobs by key.
``events``
    The event log: one row per event, its ``seq`` the primary key, its fields a JSON
    array (``_sqlite_queries``). Triggers that each writing connection creates for
    itself store the events in the transaction of the change, so no transition can
    forget one; a staged task or result has its events once its parent commits.
    Every thousand events it stores (fewer if it keeps fewer than ten thousand), an
    instance deletes the oldest beyond those kept, in the same transaction.

A blob that no row references any more (a discarded staged value or subtask payload,
a replaced resource) is deleted in the transaction that drops the reference.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from agent._chunks import chained
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
    check_batch_size,
)
from agent.backend._errors import (
    BackendError,
    LeaseLost,
    MissingOutputs,
    NotCompleted,
    NotFound,
    NotOwned,
    SessionCancelled,
    TaskCancelled,
)
from agent.backend._notify import Listener, Notifier, notify_directory
from agent.backend._options import merge_options
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
from agent.backend._sqlite_queries import (
    EVENT_TIME_FUNCTION,
    EVENT_TRIGGERS,
    STARTED_EVENT,
    Reader,
    result_record,
    session_record,
    task_record,
)
from gridpod_api import objects_pb2

__all__ = ["SqliteBackend"]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")
# (succeeded, its value or its exception)
# Submissions of up to this many tasks run on the event loop when they can.
_SHORT_SUBMISSION = 16

_Outcome = tuple[bool, Any]
# (the call, where its outcome goes, whether it may share a transaction)
_Job = tuple[Callable[[], Any], Callable[[_Outcome], None], bool]

_SCHEMA_VERSION = 4
# RETURNING and UPDATE ... FROM keep most transitions to a few statements.
_MIN_SQLITE = (3, 35, 0)
# Bounds what one transaction writes and one read hop returns of a blob.
_BATCH_BYTES = 1 << 20
# Calls queued while the backend thread is busy run as one transaction, up to this
# many: enough to share a commit, few enough to keep the write lock briefly.
_GROUP_MAX = 32
_BATCH_CHUNKS = 256
# The batch an agent asks for at most: enough for one transaction to serve many
# slots, few enough to keep the write lock briefly.
_ACQUIRE_BATCH = 64
# A value handed to the commit up to this size is kept in its result's row: the
# commit then writes one row for it instead of a blob, its chunk and their indexes.
_INLINE_MAX = 1024
# How many events a backend instance stores between two prunings of the log, at most.
_PRUNE_EVERY = 1000

_CREATING = f"{TaskStatus.CREATING:d}"
_SUBMITTED = f"{TaskStatus.SUBMITTED:d}"
_DISPATCHED = f"{TaskStatus.DISPATCHED:d}"
_PROCESSING = f"{TaskStatus.PROCESSING:d}"
_CANCELLING = f"{TaskStatus.CANCELLING:d}"
_LEASED = f"{_DISPATCHED}, {_PROCESSING}, {_CANCELLING}"
_LEASED_STATUSES = (TaskStatus.DISPATCHED, TaskStatus.PROCESSING, TaskStatus.CANCELLING)
_UNFINISHED = f"{_CREATING}, {_SUBMITTED}, {_DISPATCHED}, {_PROCESSING}"
_R_CREATED = f"{ResultStatus.CREATED:d}"
_R_COMPLETED = f"{ResultStatus.COMPLETED:d}"
_R_ABORTED = f"{ResultStatus.ABORTED:d}"

# What version 2 added to version 1, besides the columns of applications.
_SCHEMA_2 = (
    """CREATE INDEX tasks_by_application ON tasks (application_name,
        application_version, application_namespace, application_service)
        WHERE staged_by IS NULL""",
    # No AUTOINCREMENT: a new seq is one more than the largest, and pruning never
    # deletes the newest event, so seqs only grow; it would cost a page per commit.
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        kind INTEGER NOT NULL,
        at REAL NOT NULL,
        data TEXT NOT NULL
    )""",
)
# What version 3 added to version 2: who created each session.
_SCHEMA_3 = ("ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''",)
# What version 4 added to version 3: small values in their results' rows.
_SCHEMA_4 = ("ALTER TABLE results ADD COLUMN data BLOB",)
_UPGRADE_FROM_1 = (
    *(
        f"ALTER TABLE tasks ADD COLUMN application_{field} TEXT NOT NULL DEFAULT ''"
        for field in ("name", "version", "namespace", "service")
    ),
    *(
        f"ALTER TABLE sessions ADD COLUMN application_{field} TEXT NOT NULL DEFAULT ''"
        for field in ("name", "version")
    ),
    *_SCHEMA_2,
)

_SCHEMA = (
    """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        status INTEGER NOT NULL,
        default_options BLOB NOT NULL,
        partition_ids TEXT NOT NULL,
        created_at REAL NOT NULL,
        cancelled_at REAL,
        application_name TEXT NOT NULL DEFAULT '',
        application_version TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE blobs (
        blob_id TEXT PRIMARY KEY,
        size INTEGER,
        chunk_count INTEGER
    )""",
    """CREATE TABLE blob_chunks (
        blob_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (blob_id, seq)
    )""",
    """CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        partition_id TEXT NOT NULL,
        priority INTEGER NOT NULL,
        max_retries INTEGER NOT NULL,
        options BLOB NOT NULL,
        payload_blob TEXT NOT NULL,
        payload_size INTEGER NOT NULL,
        data_dependencies TEXT NOT NULL,
        expected_outputs TEXT NOT NULL,
        parent_task_ids TEXT NOT NULL,
        retry_of_ids TEXT NOT NULL,
        missing_deps INTEGER NOT NULL,
        staged_by TEXT,
        status_message TEXT NOT NULL DEFAULT '',
        owner_agent_id TEXT NOT NULL DEFAULT '',
        token TEXT,
        lease_expires_at REAL,
        created_at REAL NOT NULL,
        submitted_at REAL,
        acquired_at REAL,
        started_at REAL,
        ended_at REAL,
        application_name TEXT NOT NULL DEFAULT '',
        application_version TEXT NOT NULL DEFAULT '',
        application_namespace TEXT NOT NULL DEFAULT '',
        application_service TEXT NOT NULL DEFAULT ''
    )""",
    f"""CREATE INDEX tasks_queue ON tasks (partition_id, priority DESC, created_at)
        WHERE status = {_SUBMITTED}""",
    """CREATE INDEX tasks_leased ON tasks (lease_expires_at)
        WHERE lease_expires_at IS NOT NULL""",
    "CREATE INDEX tasks_staged ON tasks (staged_by) WHERE staged_by IS NOT NULL",
    # Without the status, which would cost every status change two index updates;
    # counts by session look the status up in the session's rows.
    "CREATE INDEX tasks_by_session ON tasks (session_id)",
    "CREATE INDEX tasks_by_payload ON tasks (payload_blob)",
    """CREATE TABLE results (
        session_id TEXT NOT NULL,
        key TEXT NOT NULL,
        owner_task_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        blob_id TEXT,
        size INTEGER NOT NULL DEFAULT 0,
        pending_owner TEXT,
        staged_by TEXT,
        created_at REAL NOT NULL,
        completed_at REAL,
        data BLOB,
        PRIMARY KEY (session_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX results_by_owner ON results (owner_task_id)",
    "CREATE INDEX results_staged ON results (staged_by) WHERE staged_by IS NOT NULL",
    "CREATE INDEX results_by_blob ON results (blob_id) WHERE blob_id IS NOT NULL",
    """CREATE TABLE dependencies (
        session_id TEXT NOT NULL,
        key TEXT NOT NULL,
        task_id TEXT NOT NULL,
        PRIMARY KEY (session_id, key, task_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE staged_results (
        task_id TEXT NOT NULL,
        key TEXT NOT NULL,
        blob_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (task_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX staged_results_by_blob ON staged_results (blob_id)",
    """CREATE TABLE resources (
        key TEXT PRIMARY KEY,
        blob_id TEXT NOT NULL,
        size INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX resources_by_blob ON resources (blob_id)",
    *_SCHEMA_2,
)

# The rowid breaks ties between tasks created in one transaction: creation order.
_ACQUIRE = f"""
UPDATE tasks SET status = {_DISPATCHED}, owner_agent_id = ?, token = ?,
    lease_expires_at = ?, acquired_at = ?
WHERE rowid = (
    SELECT rowid FROM tasks WHERE partition_id = ? AND status = {_SUBMITTED}
    ORDER BY priority DESC, created_at, rowid LIMIT 1)
RETURNING *"""

_INSERT_TASK = """
INSERT INTO tasks (task_id, session_id, status, partition_id, priority, max_retries,
    options, payload_blob, payload_size, data_dependencies, expected_outputs,
    parent_task_ids, retry_of_ids, missing_deps, staged_by, status_message,
    created_at, submitted_at, ended_at, application_name, application_version,
    application_namespace, application_service)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
RETURNING *"""

_INSERT_RETRY = f"""
INSERT INTO tasks (task_id, session_id, status, partition_id, priority, max_retries,
    options, payload_blob, payload_size, data_dependencies, expected_outputs,
    parent_task_ids, retry_of_ids, missing_deps, created_at, submitted_at,
    application_name, application_version, application_namespace,
    application_service)
SELECT ?1, session_id, {_SUBMITTED}, partition_id, priority, max_retries, options,
    payload_blob, payload_size, data_dependencies, expected_outputs, parent_task_ids,
    json_insert(retry_of_ids, '$[#]', task_id), 0, ?2, ?2, application_name,
    application_version, application_namespace, application_service
FROM tasks WHERE task_id = ?3
RETURNING *"""

# All that a commit checks, in one read: the task's lease, whether its attempt
# staged subtasks or results, and one row per result the task owns (one row with
# NULL results if it owns none), telling whether the attempt staged it and whether
# tasks wait for it.
_COMMIT_STATE = """
SELECT t.session_id, t.token, t.status,
    EXISTS (SELECT 1 FROM tasks WHERE staged_by = ?1) AS staged_subtasks,
    EXISTS (SELECT 1 FROM staged_results WHERE task_id = ?1) AS staged_results,
    r.key, r.status AS result_status, r.pending_owner,
    EXISTS (SELECT 1 FROM staged_results AS s
        WHERE s.task_id = ?1 AND s.key = r.key) AS staged,
    EXISTS (SELECT 1 FROM dependencies AS d
        WHERE d.session_id = r.session_id AND d.key = r.key) AS awaited
FROM tasks AS t LEFT JOIN results AS r ON r.owner_task_id = t.task_id
WHERE t.task_id = ?1"""

_COMMIT_RESULT = f"""
UPDATE results SET status = {_R_COMPLETED}, completed_at = ?, blob_id = ?, size = ?,
    data = ?
WHERE session_id = ? AND key = ? AND status = {_R_CREATED}"""

# Both statements are driven by the attempt's few staged rows, looked up by key, so
# that their cost does not grow with the session.
_COMMIT_STAGED_RESULTS = f"""
UPDATE results SET status = {_R_COMPLETED}, completed_at = ?3,
    blob_id = (SELECT blob_id FROM staged_results
        WHERE task_id = ?1 AND key = results.key),
    size = (SELECT size FROM staged_results WHERE task_id = ?1 AND key = results.key)
WHERE session_id = ?2 AND status = {_R_CREATED}
    AND key IN (SELECT key FROM staged_results WHERE task_id = ?1)"""

# Each waiting task loses one missing dependency per completed key it waits for, and
# is queued when that was the last one (SET expressions see the row before update).
_LOSE_DEPENDENCIES = f"""
UPDATE tasks SET
    missing_deps = missing_deps - done.n,
    status = CASE WHEN missing_deps = done.n AND status = {_CREATING}
        AND staged_by IS NULL THEN {_SUBMITTED} ELSE status END,
    submitted_at = CASE WHEN missing_deps = done.n AND status = {_CREATING}
        AND staged_by IS NULL THEN ?3 ELSE submitted_at END
FROM done WHERE tasks.task_id = done.task_id"""

# CROSS JOIN keeps staged_results as the outer loop.
_PUSH_TO_DEPENDENTS = f"""
WITH done AS (
    SELECT d.task_id, count(*) AS n
    FROM staged_results AS s CROSS JOIN dependencies AS d
        ON d.session_id = ?2 AND d.key = s.key
    WHERE s.task_id = ?1 GROUP BY d.task_id)
{_LOSE_DEPENDENCIES}"""

_DROP_DEPENDENCY_EDGES = """
DELETE FROM dependencies WHERE session_id = ?2
    AND key IN (SELECT key FROM staged_results WHERE task_id = ?1)"""

# The same two for the keys of a JSON array ?1, completed without being staged.
_PUSH_TO_DEPENDENTS_OF_KEYS = f"""
WITH done AS (
    SELECT d.task_id, count(*) AS n
    FROM json_each(?1) AS s CROSS JOIN dependencies AS d
        ON d.session_id = ?2 AND d.key = s.value
    GROUP BY d.task_id)
{_LOSE_DEPENDENCIES}"""

_DROP_DEPENDENCY_EDGES_OF_KEYS = """
DELETE FROM dependencies WHERE session_id = ?2
    AND key IN (SELECT value FROM json_each(?1))"""

_BLOB_REFERENCED = """
SELECT EXISTS (SELECT 1 FROM tasks WHERE payload_blob = ?1)
    OR EXISTS (SELECT 1 FROM results WHERE blob_id = ?1)
    OR EXISTS (SELECT 1 FROM staged_results WHERE blob_id = ?1)
    OR EXISTS (SELECT 1 FROM resources WHERE blob_id = ?1)"""

_COMPLETE_ATTEMPT = f"""
UPDATE tasks SET status = {TaskStatus.COMPLETED:d}, status_message = '', ended_at = ?,
    token = NULL, lease_expires_at = NULL, started_at = coalesce(?, started_at)
WHERE task_id = ?"""

_END_ATTEMPT = """
UPDATE tasks SET status = ?, status_message = ?, ended_at = ?, token = NULL,
    lease_expires_at = NULL
WHERE task_id = ? RETURNING *"""


def _clock() -> float:
    """Now in Unix seconds, to the microsecond: what a record's datetime holds, so
    that a bound taken from a record compares with the stored time exactly."""
    return round(time.time(), 6)


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).isoformat()


def _application(options: objects_pb2.TaskOptions) -> tuple[str, str, str, str]:
    """The columns that name the application of tasks of these options."""
    return (
        options.application_name,
        options.application_version,
        options.application_namespace,
        options.application_service,
    )


def _aborted_dependency_message(key: str) -> str:
    return f"data dependency {key!r} was aborted"


def _one(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
    # fetchall steps the statement to its end, so no statement is left in progress.
    rows = db.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _column(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return [row[0] for row in db.execute(sql, params).fetchall()]


class _Locked(Exception):
    """Another process holds the write lock; the call must wait its turn."""


class _Transition:
    """Steps shared by the transitions, inside one open transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.now = _clock()

    # -- reading ------------------------------------------------------------------

    def session(self, session_id: str) -> sqlite3.Row:
        row = _one(
            self.db, "SELECT * FROM sessions WHERE session_id = ?", (session_id,)
        )
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        return row

    def task(self, task_id: str) -> sqlite3.Row:
        row = _one(self.db, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return row

    def attempt(self, attempt: Attempt, *, cancelling_ok: bool = False) -> sqlite3.Row:
        """The attempt's task row, if the attempt is still the task's."""
        task_id = attempt.task.task_id
        row = _one(self.db, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return _check_attempt(attempt, row, cancelling_ok=cancelling_ok)

    def blob_size(self, blob_id: str) -> int:
        size = _column(
            self.db,
            "SELECT size FROM blobs WHERE blob_id = ? AND size IS NOT NULL",
            (blob_id,),
        )
        if not size:
            raise NotFound(f"no blob {blob_id!r}")
        return int(size[0])

    def open_outputs(self, task_id: str) -> list[str]:
        """The results the task owns that are neither completed nor aborted."""
        return _column(
            self.db,
            "SELECT key FROM results "
            f"WHERE owner_task_id = ? AND status = {_R_CREATED}",
            (task_id,),
        )

    # -- ending attempts ----------------------------------------------------------

    def end_attempt(
        self, task_id: str, status: TaskStatus, message: str = ""
    ) -> sqlite3.Row:
        row = _one(self.db, _END_ATTEMPT, (status, message, self.now, task_id))
        assert row is not None  # the caller holds the task's row in this transaction
        return row

    def fail(self, row: sqlite3.Row, error: str, status: TaskStatus) -> sqlite3.Row:
        """End a running attempt as failed; retry it if it has retries left."""
        task_id = row["task_id"]
        self.discard_staged(task_id)
        failed = self.end_attempt(task_id, status, error)
        if len(json.loads(row["retry_of_ids"])) < row["max_retries"]:
            return self.retry(task_id)
        self.abort(row["session_id"], self.open_outputs(task_id))
        return failed

    def retry(self, task_id: str) -> sqlite3.Row:
        retry_id = str(uuid.uuid4())
        row = _one(self.db, _INSERT_RETRY, (retry_id, self.now, task_id))
        assert row is not None
        self.db.execute(
            "UPDATE results SET owner_task_id = ? WHERE owner_task_id = ?",
            (retry_id, task_id),
        )
        return row

    def end_cancelled(self, row: sqlite3.Row) -> sqlite3.Row:
        self.discard_staged(row["task_id"])
        return self.end_attempt(row["task_id"], TaskStatus.CANCELLED)

    def discard_staged(self, task_id: str) -> None:
        """Forget what the task's attempt staged: results, subtasks, delegations."""
        blobs = _column(
            self.db,
            "DELETE FROM staged_results WHERE task_id = ? RETURNING blob_id",
            (task_id,),
        )
        subtasks = self.db.execute(
            "DELETE FROM tasks WHERE staged_by = ? "
            "RETURNING session_id, task_id, data_dependencies, payload_blob",
            (task_id,),
        ).fetchall()
        if subtasks:
            self.db.execute("DELETE FROM results WHERE staged_by = ?", (task_id,))
            self.db.execute(
                "UPDATE results SET pending_owner = NULL "
                "WHERE owner_task_id = ? AND pending_owner IS NOT NULL",
                (task_id,),
            )
            self.db.executemany(
                "DELETE FROM dependencies "
                "WHERE session_id = ? AND key = ? AND task_id = ?",
                [
                    (sub["session_id"], key, sub["task_id"])
                    for sub in subtasks
                    for key in json.loads(sub["data_dependencies"])
                ],
            )
            blobs += [sub["payload_blob"] for sub in subtasks]
        self.drop_blobs(blobs)

    def drop_blobs(self, blob_ids: Iterable[str]) -> None:
        for blob_id in set(blob_ids):
            if _column(self.db, _BLOB_REFERENCED, (blob_id,))[0]:
                continue
            self.db.execute("DELETE FROM blob_chunks WHERE blob_id = ?", (blob_id,))
            self.db.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,))

    # -- results ------------------------------------------------------------------

    def abort(self, session_id: str, keys: Iterable[str]) -> None:
        """Abort the results and, transitively, fail the tasks waiting for them."""
        pending = list(keys)
        while pending:
            key = pending.pop()
            aborted = self.db.execute(
                f"UPDATE results SET status = {_R_ABORTED} "
                f"WHERE session_id = ? AND key = ? AND status = {_R_CREATED}",
                (session_id, key),
            )
            if aborted.rowcount:
                pending += self._fail_waiting(session_id, key)

    def _fail_waiting(self, session_id: str, key: str) -> list[str]:
        """Fail the tasks waiting for the aborted ``key``; their open outputs."""
        outputs: list[str] = []
        waiting = _column(
            self.db,
            "DELETE FROM dependencies WHERE session_id = ? AND key = ? "
            "RETURNING task_id",
            (session_id, key),
        )
        # A staged subtask is left alone: its parent's commit checks its dependencies.
        for task_id in waiting:
            failed = self.db.execute(
                f"UPDATE tasks SET status = {TaskStatus.ERROR:d}, status_message = ?, "
                f"ended_at = ? WHERE task_id = ? AND status = {_CREATING} "
                "AND staged_by IS NULL",
                (_aborted_dependency_message(key), self.now, task_id),
            )
            if failed.rowcount:
                outputs += self.open_outputs(task_id)
        return outputs

    def commit_staged_results(self, task_id: str, session_id: str) -> None:
        self.db.execute(_COMMIT_STAGED_RESULTS, (task_id, session_id, self.now))
        self.db.execute(_PUSH_TO_DEPENDENTS, (task_id, session_id, self.now))
        self.db.execute(_DROP_DEPENDENCY_EDGES, (task_id, session_id))
        self.db.execute("DELETE FROM staged_results WHERE task_id = ?", (task_id,))

    def commit_values(
        self, session_id: str, values: Mapping[str, bytes], awaited: list[str]
    ) -> None:
        """Complete results with values held in memory, as the commit of staged
        ones would, in the same order; ``awaited`` are those that tasks wait for."""
        self.db.executemany(
            _COMMIT_RESULT,
            [
                (self.now, *self._kept(data), session_id, key)
                for key, data in sorted(values.items())
            ],
        )
        if awaited:
            keys = json.dumps(sorted(awaited))
            self.db.execute(_PUSH_TO_DEPENDENTS_OF_KEYS, (keys, session_id, self.now))
            self.db.execute(_DROP_DEPENDENCY_EDGES_OF_KEYS, (keys, session_id))

    def _kept(self, data: bytes) -> tuple[str | None, int, bytes | None]:
        """Where a result's value is kept: its blob id, size and inline data."""
        if len(data) <= _INLINE_MAX:
            return None, len(data), data
        blob = _store_value(self.db, data)
        return blob.blob_id, blob.size, None

    # -- subtasks and cancellation ------------------------------------------------

    def unstage_subtasks(self, task_id: str) -> list[str]:
        subtasks = _column(
            self.db,
            "UPDATE tasks SET staged_by = NULL WHERE staged_by = ? RETURNING task_id",
            (task_id,),
        )
        if subtasks:
            self.db.execute(
                "UPDATE results SET staged_by = NULL WHERE staged_by = ?", (task_id,)
            )
            self.db.execute(
                "UPDATE results "
                "SET owner_task_id = pending_owner, pending_owner = NULL "
                "WHERE owner_task_id = ? AND pending_owner IS NOT NULL",
                (task_id,),
            )
        return subtasks

    def activate(self, task_id: str) -> None:
        """Queue a just-committed subtask, or fail it if a dependency was aborted."""
        row = self.task(task_id)
        status = TaskStatus(row["status"])
        if status.is_final:
            # Cancelled while staged: what it was delegated cannot be produced.
            self.abort(row["session_id"], self.open_outputs(task_id))
            return
        if status != TaskStatus.CREATING:
            return
        aborted = self._aborted_dependency(row)
        if aborted is not None:
            self.end_attempt(
                task_id, TaskStatus.ERROR, _aborted_dependency_message(aborted)
            )
            self.abort(row["session_id"], self.open_outputs(task_id))
        elif row["missing_deps"] == 0:
            self.db.execute(
                f"UPDATE tasks SET status = {_SUBMITTED}, submitted_at = ? "
                "WHERE task_id = ?",
                (self.now, task_id),
            )

    def _aborted_dependency(self, row: sqlite3.Row) -> str | None:
        keys = _column(
            self.db,
            "SELECT key FROM results WHERE session_id = ? "
            f"AND key IN (SELECT value FROM json_each(?)) AND status = {_R_ABORTED}",
            (row["session_id"], row["data_dependencies"]),
        )
        return keys[0] if keys else None

    def cancel(self, row: sqlite3.Row) -> None:
        status = row["status"]
        if status in (TaskStatus.CREATING, TaskStatus.SUBMITTED):
            self.db.execute(
                f"UPDATE tasks SET status = {TaskStatus.CANCELLED:d}, ended_at = ? "
                "WHERE task_id = ?",
                (self.now, row["task_id"]),
            )
        elif status in (TaskStatus.DISPATCHED, TaskStatus.PROCESSING):
            self.db.execute(
                f"UPDATE tasks SET status = {_CANCELLING} WHERE task_id = ?",
                (row["task_id"],),
            )
        else:
            return
        self.abort(row["session_id"], self.open_outputs(row["task_id"]))


class _Commit:
    """What an attempt's commit checks, read at its start; raises LeaseLost or
    TaskCancelled if the attempt may not commit."""

    def __init__(self, step: _Transition, attempt: Attempt) -> None:
        self._step = step
        self.task_id = attempt.task.task_id
        rows = step.db.execute(_COMMIT_STATE, (self.task_id,)).fetchall()
        task = _check_attempt(attempt, rows[0] if rows else None)
        self.session_id: str = task["session_id"]
        self.status = TaskStatus(task["status"])
        self.staged_subtasks = bool(task["staged_subtasks"])
        self.staged_results = bool(task["staged_results"])
        self._outputs = {row["key"]: row for row in rows if row["key"] is not None}

    def check_sent(self, values: Collection[str]) -> None:
        """Raise NotOwned for the first of ``values`` the task may not send, or
        MissingOutputs if, with them, outputs would still be missing."""
        for key in values:
            self._check_owned(key)
        unsent = sorted(
            key
            for key, output in self._outputs.items()
            if _sendable(output) and not output["staged"] and key not in values
        )
        if unsent:
            raise MissingOutputs(unsent)

    def _check_owned(self, key: str) -> None:
        output = self._outputs.get(key)
        if output is not None and _sendable(output):
            return
        # Refused: the result's own row tells why.
        result = _one(
            self._step.db,
            "SELECT owner_task_id, status, pending_owner FROM results "
            "WHERE session_id = ? AND key = ?",
            (self.session_id, key),
        )
        _check_owned(self.task_id, self.session_id, key, result)

    def awaited(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if self._outputs[key]["awaited"]]


def _sendable(output: sqlite3.Row) -> bool:
    return (
        output["result_status"] == ResultStatus.CREATED
        and output["pending_owner"] is None
    )


class _Creation:
    """One request creating tasks: a client's submission or an attempt's subtasks."""

    def __init__(
        self,
        step: _Transition,
        session: sqlite3.Row,
        options: objects_pb2.TaskOptions | None,
        parent: sqlite3.Row | None = None,
    ) -> None:
        self._step = step
        self._db = step.db
        self._session_id: str = session["session_id"]
        self._parent_id: str | None = None if parent is None else parent["task_id"]
        lineage = [] if parent is None else json.loads(parent["parent_task_ids"])
        self._lineage = json.dumps(lineage + ([self._parent_id] if parent else []))
        defaults = objects_pb2.TaskOptions.FromString(session["default_options"])
        self._options = merge_options(defaults, options)
        partitions = json.loads(session["partition_ids"])
        if not self._options.partition_id and partitions:
            self._options.partition_id = partitions[0]
        self._options_blob = self._options.SerializeToString(deterministic=True)
        self._refusal: str | None = None
        if partitions and self._options.partition_id not in partitions:
            self._refusal = (
                f"partition {self._options.partition_id!r} is not one of session "
                f"{self._session_id}'s partitions {partitions}"
            )

    def create(self, index: int, task: NewTask) -> TaskRecord | TaskRefusal:
        if self._refusal is not None:
            return TaskRefusal(index, self._refusal)
        outputs = self._plan_outputs(task)
        if isinstance(outputs, str):
            return TaskRefusal(index, outputs)
        dependencies = self._dependency_statuses(task)
        if isinstance(dependencies, str):
            return TaskRefusal(index, dependencies)
        try:
            payload_size = self._step.blob_size(task.payload.blob_id)
        except NotFound:
            return TaskRefusal(index, f"no payload blob {task.payload.blob_id!r}")
        new_keys, delegated = outputs
        return self._insert(task, payload_size, new_keys, delegated, dependencies)

    def _plan_outputs(self, task: NewTask) -> tuple[list[str], list[str]] | str:
        """The outputs to create and those to delegate, or why the task is refused."""
        keys = list(task.expected_outputs)
        if not keys:
            return "a task needs at least one expected output"
        if len(set(keys)) != len(keys):
            return f"expected outputs listed more than once: {keys}"
        new_keys: list[str] = []
        delegated: list[str] = []
        for key in keys:
            row = _one(
                self._db,
                "SELECT owner_task_id, status, pending_owner FROM results "
                "WHERE session_id = ? AND key = ?",
                (self._session_id, key),
            )
            if row is None:
                new_keys.append(key)
                continue
            refusal = self._delegation_refusal(key, row)
            if refusal is not None:
                return refusal
            delegated.append(key)
        return new_keys, delegated

    def _delegation_refusal(self, key: str, row: sqlite3.Row) -> str | None:
        exists = f"result {key!r} already exists in session {self._session_id}"
        if self._parent_id is None or row["owner_task_id"] != self._parent_id:
            return exists
        if row["pending_owner"] is not None:
            return f"{exists}; it was already delegated to task {row['pending_owner']}"
        sent = _one(
            self._db,
            "SELECT 1 FROM staged_results WHERE task_id = ? AND key = ?",
            (self._parent_id, key),
        )
        if row["status"] != ResultStatus.CREATED or sent is not None:
            return f"{exists}; task {self._parent_id} already sent it"
        return None

    def _dependency_statuses(self, task: NewTask) -> dict[str, ResultStatus] | str:
        statuses: dict[str, ResultStatus] = {}
        for key in task.data_dependencies:
            if key in task.expected_outputs:
                return f"the task depends on its own expected output {key!r}"
            row = _one(
                self._db,
                "SELECT status FROM results WHERE session_id = ? AND key = ? "
                "AND (staged_by IS NULL OR staged_by = ?)",
                (self._session_id, key, self._parent_id),
            )
            if row is None:
                return (
                    f"data dependency {key!r} is not a result of session "
                    f"{self._session_id}"
                )
            statuses[key] = ResultStatus(row["status"])
        return statuses

    def _initial_status(
        self, dependencies: dict[str, ResultStatus]
    ) -> tuple[TaskStatus, str]:
        # A staged subtask waits for its parent's commit, which decides for it.
        if self._parent_id is not None:
            return TaskStatus.CREATING, ""
        for key, status in dependencies.items():
            if status == ResultStatus.ABORTED:
                return TaskStatus.ERROR, _aborted_dependency_message(key)
        if ResultStatus.CREATED in dependencies.values():
            return TaskStatus.CREATING, ""
        return TaskStatus.SUBMITTED, ""

    def _insert(
        self,
        task: NewTask,
        payload_size: int,
        new_keys: list[str],
        delegated: list[str],
        dependencies: dict[str, ResultStatus],
    ) -> TaskRecord:
        task_id = str(uuid.uuid4())
        now = self._step.now
        status, message = self._initial_status(dependencies)
        missing = [k for k, s in dependencies.items() if s == ResultStatus.CREATED]
        row = _one(
            self._db,
            _INSERT_TASK,
            (
                task_id,
                self._session_id,
                status,
                self._options.partition_id,
                self._options.priority,
                self._options.max_retries,
                self._options_blob,
                task.payload.blob_id,
                payload_size,
                json.dumps(list(task.data_dependencies)),
                json.dumps(list(task.expected_outputs)),
                self._lineage,
                len(missing),
                self._parent_id,
                message,
                now,
                now if status == TaskStatus.SUBMITTED else None,
                now if status.is_final else None,
                *_application(self._options),
            ),
        )
        assert row is not None
        self._store_outputs(task_id, status, new_keys, delegated)
        if status == TaskStatus.CREATING:
            self._db.executemany(
                "INSERT INTO dependencies (session_id, key, task_id) VALUES (?, ?, ?)",
                [(self._session_id, key, task_id) for key in missing],
            )
        return task_record(row)

    def _store_outputs(
        self,
        task_id: str,
        status: TaskStatus,
        new_keys: list[str],
        delegated: list[str],
    ) -> None:
        aborted = status == TaskStatus.ERROR
        result_status = ResultStatus.ABORTED if aborted else ResultStatus.CREATED
        now = self._step.now
        self._db.executemany(
            "INSERT INTO results (session_id, key, owner_task_id, status, staged_by, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (self._session_id, key, task_id, result_status, self._parent_id, now)
                for key in new_keys
            ],
        )
        self._db.executemany(
            "UPDATE results SET pending_owner = ? WHERE session_id = ? AND key = ?",
            [(task_id, self._session_id, key) for key in delegated],
        )


def _upgrade_from_1(db: sqlite3.Connection) -> None:
    """Add what version 2 added: the applications' columns, filled from the stored
    options, the event log (empty) and the indexes of listings.

    Agents of version 1 still running on the file would go on without storing
    events: stop them first.
    """
    for statement in _UPGRADE_FROM_1:
        db.execute(statement)
    tasks = db.execute("SELECT task_id, options FROM tasks").fetchall()
    db.executemany(
        "UPDATE tasks SET application_name = ?, application_version = ?, "
        "application_namespace = ?, application_service = ? WHERE task_id = ?",
        [
            (*_application(objects_pb2.TaskOptions.FromString(options)), task_id)
            for task_id, options in tasks
        ],
    )
    sessions = db.execute("SELECT session_id, default_options FROM sessions")
    db.executemany(
        "UPDATE sessions SET application_name = ?, application_version = ? "
        "WHERE session_id = ?",
        [
            (*_application(objects_pb2.TaskOptions.FromString(options))[:2], sid)
            for sid, options in sessions.fetchall()
        ],
    )


def _enable_wal(db: sqlite3.Connection, deadline: float) -> None:
    # Switching a new file to WAL takes an exclusive lock, and sqlite reports a busy
    # file at once here rather than through the busy timeout.
    while True:
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode != "wal":
            raise BackendError(
                f"cannot use a write-ahead log on this file (journal mode {mode!r}); "
                "put the state file on a local filesystem"
            )
        return


class _Wakeups:
    """What the open transaction changed, for the wake-ups published at its commit.

    The event triggers call ``event_at`` for every event they store; a savepoint
    rolled back takes its topics with it.
    """

    def __init__(self, publish: Callable[[int], None]) -> None:
        self._publish = publish
        self.topics = 0
        # Events stored since the log was last pruned; rolled-back ones count too.
        self.unpruned = 0

    def event_at(self, queued: int) -> float:
        self.topics |= Topic.STATE | (Topic.QUEUE if queued else 0)
        self.unpruned += 1
        return time.time()

    def touch(self, topics: Topic) -> None:
        self.topics |= topics

    def discard(self) -> None:
        self.topics = 0

    def committed(self) -> None:
        topics, self.topics = self.topics, 0
        if not topics:
            return
        try:
            self._publish(topics)
        except Exception:
            # The transition is committed: its caller must hear so, whatever the
            # wake-up's fate. Subscribers time out and look again.
            logger.warning("cannot publish wake-ups for %d", topics, exc_info=True)


class _Store:
    """The connection and every transition; used only on the backend's thread."""

    def __init__(
        self,
        path: Path,
        busy_timeout: timedelta,
        keep_events: int,
        publish: Callable[[int], None],
    ) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise BackendError(
                f"the embedded backend needs SQLite {'.'.join(map(str, _MIN_SQLITE))} "
                f"or later; this Python links SQLite {sqlite3.sqlite_version}"
            )
        seconds = busy_timeout.total_seconds()
        self._busy_ms = int(seconds * 1000)
        # Whether the connection waits up to busy_timeout for another process's
        # write lock, as ``connect`` sets it, or gives up at once.
        self._waits = True
        self._grouped = False
        self._keep_events = keep_events
        # Often enough that the log stays near its bound, in deletions short enough
        # not to hold up the transition that makes them.
        self._prune_every = max(1, min(_PRUNE_EVERY, keep_events // 10))
        self._wakeups = _Wakeups(publish)
        # Used by the backend thread and, for short calls, by the event loop, never
        # both at once: the thread's lock keeps them apart.
        self._db = sqlite3.connect(
            path, timeout=seconds, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous = NORMAL")
        _enable_wal(self._db, time.monotonic() + seconds)
        with self._transaction() as db:
            self._create_schema(db, path)
        self._db.create_function(
            EVENT_TIME_FUNCTION, 1, self._wakeups.event_at, deterministic=False
        )
        for trigger in EVENT_TRIGGERS:
            self._db.execute(trigger)

    @staticmethod
    def _create_schema(db: sqlite3.Connection, path: Path) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA_VERSION:
            return
        if not 0 <= version <= _SCHEMA_VERSION:
            raise BackendError(
                f"{path} holds state of schema version {version}; this agent knows "
                f"versions up to {_SCHEMA_VERSION}"
            )
        if version == 0:
            statements: tuple[str, ...] = _SCHEMA
        else:
            if version == 1:
                _upgrade_from_1(db)
            statements = (_SCHEMA_3 if version <= 2 else ()) + _SCHEMA_4
        for statement in statements:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def without_waiting(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` but give up at once, raising ``_Locked``, if another process
        holds the write lock: the event loop must not wait on the disk."""
        self._wait_for_lock(False)
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise _Locked from error
            raise

    def waiting(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` on the backend's thread, waiting up to ``busy_timeout`` for
        another process's write lock."""
        self._wait_for_lock(True)
        return fn(*args, **kwargs)

    def _wait_for_lock(self, wait: bool) -> None:
        # Set only when it changes: a pragma costs about as much as a short
        # statement, and most calls run the same way as the one before them.
        if wait != self._waits:
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms if wait else 0}")
            self._waits = wait

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._grouped:
            yield from self._savepoint()
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._prune_events()
            self._db.execute("COMMIT")
        except BaseException:
            self._wakeups.discard()
            # A failed COMMIT too: a transaction left open would refuse every
            # later BEGIN on this connection.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._wakeups.committed()

    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        topics = self._wakeups.topics
        self._db.execute("SAVEPOINT transition")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK TO transition")
            self._db.execute("RELEASE transition")
            self._wakeups.topics = topics
            raise
        self._db.execute("RELEASE transition")

    def _prune_events(self) -> None:
        """Drop the oldest events beyond those kept, once enough were added."""
        if self._wakeups.unpruned < self._prune_every:
            return
        self._wakeups.unpruned = 0
        self._db.execute(
            "DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?",
            (self._keep_events,),
        )

    def run_group(self, calls: Sequence[Callable[[], Any]]) -> list[_Outcome]:
        """Run several calls as one transaction, each in a savepoint of its own.

        What one call changes is isolated from the others' failures, and the group
        pays for one commit instead of one per call. Outcomes count only once the
        commit succeeded; if it fails, every call of the group failed with it.
        """
        outcomes: list[_Outcome] = []
        self._wait_for_lock(True)
        self._db.execute("BEGIN IMMEDIATE")
        self._grouped = True
        try:
            for call in calls:
                try:
                    outcomes.append((True, call()))
                except Exception as error:
                    outcomes.append((False, error))
        except BaseException:
            self._wakeups.discard()
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._grouped = False
        try:
            self._prune_events()
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._wakeups.discard()
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            return [(False, error)] * len(calls)
        self._wakeups.committed()
        return outcomes

    # -- sessions -----------------------------------------------------------------

    def create_session(
        self,
        default_options: objects_pb2.TaskOptions,
        partition_ids: list[str],
        owner: str,
    ) -> SessionRecord:
        with self._transaction() as db:
            row = _one(
                db,
                "INSERT INTO sessions (session_id, status, default_options, "
                "partition_ids, created_at, application_name, application_version, "
                "owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (
                    str(uuid.uuid4()),
                    SessionStatus.RUNNING,
                    default_options.SerializeToString(deterministic=True),
                    json.dumps(partition_ids),
                    _clock(),
                    *_application(default_options)[:2],
                    owner,
                ),
            )
            self._wakeups.touch(Topic.STATE)
        assert row is not None
        return session_record(row)

    def get_session(self, session_id: str) -> SessionRecord:
        return session_record(_Transition(self._db).session(session_id))

    def cancel_session(self, session_id: str) -> SessionRecord:
        with self._transaction() as db:
            step = _Transition(db)
            session = step.session(session_id)
            if session["status"] == SessionStatus.CANCELLED:
                return session_record(session)
            db.execute(
                "UPDATE sessions SET status = ?, cancelled_at = ? WHERE session_id = ?",
                (SessionStatus.CANCELLED, step.now, session_id),
            )
            self._wakeups.touch(Topic.STATE)
            # Staged subtasks go with their parent, which is cancelled here too.
            tasks = db.execute(
                "SELECT * FROM tasks WHERE session_id = ? "
                f"AND status IN ({_UNFINISHED}) AND staged_by IS NULL",
                (session_id,),
            ).fetchall()
            for row in tasks:
                step.cancel(row)
            return session_record(step.session(session_id))

    # -- blobs --------------------------------------------------------------------

    def write_chunks(
        self, blob_id: str, first_seq: int, chunks: list[bytes], size: int | None
    ) -> None:
        """Append chunks; ``size`` is given with the last batch, completing the blob."""
        with self._transaction() as db:
            if first_seq == 0:
                db.execute("INSERT INTO blobs (blob_id) VALUES (?)", (blob_id,))
            db.executemany(
                "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)",
                [(blob_id, first_seq + i, chunk) for i, chunk in enumerate(chunks)],
            )
            if size is not None:
                db.execute(
                    "UPDATE blobs SET size = ?, chunk_count = ? WHERE blob_id = ?",
                    (size, first_seq + len(chunks), blob_id),
                )

    def drop_unfinished_blob(self, blob_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM blob_chunks WHERE blob_id = ?", (blob_id,))
            db.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,))

    def discard_blobs(self, blob_ids: Sequence[str]) -> None:
        with self._transaction() as db:
            _Transition(db).drop_blobs(blob_ids)

    def open_blob(self, blob_id: str) -> tuple[str, int, list[bytes]]:
        """The blob's chunk count and first batch of chunks."""
        row = _one(
            self._db,
            "SELECT chunk_count FROM blobs WHERE blob_id = ? AND size IS NOT NULL",
            (blob_id,),
        )
        if row is None:
            raise NotFound(f"no blob {blob_id!r}")
        count: int = row[0]
        return blob_id, count, self.chunks(blob_id, 0) if count else []

    def whole_blob(self, blob_id: str) -> bytes:
        """A small blob's data in one piece (``chunks`` returns one batch only)."""
        rows = self._db.execute(
            "SELECT data FROM blob_chunks WHERE blob_id = ? ORDER BY seq", (blob_id,)
        ).fetchall()
        return b"".join(data for (data,) in rows)

    def chunks(self, blob_id: str, first_seq: int) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        cursor = self._db.execute(
            "SELECT data FROM blob_chunks WHERE blob_id = ? AND seq >= ? ORDER BY seq",
            (blob_id, first_seq),
        )
        try:
            for (data,) in cursor:
                batch.append(data)
                size += len(data)
                if size >= _BATCH_BYTES or len(batch) >= _BATCH_CHUNKS:
                    break
        finally:
            cursor.close()
        return batch

    # -- creating tasks -----------------------------------------------------------

    def submit_tasks(
        self,
        session_id: str,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None,
    ) -> list[TaskRecord | TaskRefusal]:
        with self._transaction() as db:
            step = _Transition(db)
            session = step.session(session_id)
            if session["status"] == SessionStatus.CANCELLED:
                raise SessionCancelled(
                    f"session {session_id} is cancelled: it takes no new tasks"
                )
            creation = _Creation(step, session, options)
            return [creation.create(i, task) for i, task in enumerate(tasks)]

    def stage_subtasks(
        self,
        attempt: Attempt,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None,
    ) -> list[TaskRecord | TaskRefusal]:
        with self._transaction() as db:
            step = _Transition(db)
            parent = step.attempt(attempt)
            session = step.session(parent["session_id"])
            creation = _Creation(step, session, options, parent)
            return [creation.create(i, task) for i, task in enumerate(tasks)]

    # -- the agent's side ---------------------------------------------------------

    def acquire(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        payload_up_to: int,
        limit: int = 1,
    ) -> list[Attempt]:
        """Up to ``limit`` tasks, in queue order, in one transaction; with the
        payloads asked for that fit in its read of at most ``_BATCH_BYTES``."""
        taken: list[tuple[sqlite3.Row, str, bytes | None]] = []
        # Small payloads are read in this transaction, which costs less than a
        # read transaction of their own; the others after it, not to hold the
        # write lock meanwhile.
        room = _BATCH_BYTES
        with self._transaction() as db:
            now = _clock()
            expires = now + lease.total_seconds()
            while len(taken) < limit:
                token = secrets.token_urlsafe(32)
                row = _one(db, _ACQUIRE, (agent_id, token, expires, now, partition_id))
                if row is None:
                    break
                size = row["payload_size"]
                payload = None
                if size <= min(payload_up_to, room):
                    payload = self.whole_blob(row["payload_blob"])
                    room -= size
                taken.append((row, token, payload))
        return [
            Attempt(
                task_record(row), agent_id, token, _utc(expires), payload_data=payload
            )
            for row, token, payload in taken
        ]

    def start(self, attempt: Attempt, at: float | None = None) -> None:
        with self._transaction() as db:
            step = _Transition(db)
            # Nothing changed: the attempt started already, or it is not the
            # task's any more and this raises.
            if not _record_start(db, attempt, step.now if at is None else at):
                step.attempt(attempt)

    def renew(self, attempt: Attempt, lease: timedelta) -> Attempt:
        with self._transaction() as db:
            step = _Transition(db)
            step.attempt(attempt)
            expires = step.now + lease.total_seconds()
            db.execute(
                "UPDATE tasks SET lease_expires_at = ? WHERE task_id = ?",
                (expires, attempt.task.task_id),
            )
        return replace(attempt, lease_expires_at=_utc(expires))

    def stage_result(self, attempt: Attempt, key: str, data: BlobRef) -> None:
        with self._transaction() as db:
            step = _Transition(db)
            task_id = self._owned(step, attempt, key)
            self._stage(step, task_id, key, data.blob_id, step.blob_size(data.blob_id))

    def stage_small_result(
        self, attempt: Attempt, key: str, blob_id: str, chunks: list[bytes], size: int
    ) -> BlobRef:
        """Store the chunks as a blob and stage it, in one transaction."""
        with self._transaction() as db:
            self._stage_data(_Transition(db), attempt, key, blob_id, chunks, size)
        return BlobRef(blob_id, size)

    def _stage_data(
        self,
        step: _Transition,
        attempt: Attempt,
        key: str,
        blob_id: str,
        chunks: list[bytes],
        size: int,
    ) -> None:
        task_id = self._owned(step, attempt, key)
        _insert_blob(step.db, blob_id, chunks, size)
        self._stage(step, task_id, key, blob_id, size)

    def check_owned(self, attempt: Attempt, key: str) -> None:
        self._owned(_Transition(self._db), attempt, key)

    @staticmethod
    def _owned(step: _Transition, attempt: Attempt, key: str) -> str:
        """The attempt's task id, if the task may send ``key``; else raise."""
        row = step.attempt(attempt)
        task_id, session_id = row["task_id"], row["session_id"]
        result = _one(
            step.db,
            "SELECT owner_task_id, status, pending_owner FROM results "
            "WHERE session_id = ? AND key = ?",
            (session_id, key),
        )
        _check_owned(task_id, session_id, key, result)
        return str(task_id)

    @staticmethod
    def _stage(
        step: _Transition, task_id: str, key: str, blob_id: str, size: int
    ) -> None:
        replaced = _column(
            step.db,
            "SELECT blob_id FROM staged_results WHERE task_id = ? AND key = ?",
            (task_id, key),
        )
        step.db.execute(
            "INSERT INTO staged_results (task_id, key, blob_id, size) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (task_id, key) DO UPDATE "
            "SET blob_id = excluded.blob_id, size = excluded.size",
            (task_id, key, blob_id, size),
        )
        step.drop_blobs(b for b in replaced if b != blob_id)

    def complete(
        self,
        attempt: Attempt,
        results: Mapping[str, bytes] | None = None,
        started_at: float | None = None,
    ) -> None:
        values = results or {}
        with self._transaction() as db:
            step = _Transition(db)
            commit = _Commit(step, attempt)
            commit.check_sent(values)
            # A step that the read shows would change nothing is skipped.
            task_id = commit.task_id
            if commit.status != TaskStatus.DISPATCHED:
                started_at = None  # recorded already
            if started_at is not None:
                # Its event first, as if the start had been an UPDATE of its own;
                # the UPDATE that ends the attempt records the time.
                db.execute(STARTED_EVENT, (commit.session_id, task_id))
            subtasks = step.unstage_subtasks(task_id) if commit.staged_subtasks else []
            self._commit_results(step, commit, values)
            for subtask_id in subtasks:
                step.activate(subtask_id)
            db.execute(_COMPLETE_ATTEMPT, (step.now, started_at, task_id))

    def _commit_results(
        self, step: _Transition, commit: _Commit, values: Mapping[str, bytes]
    ) -> None:
        if not commit.staged_results:
            step.commit_values(commit.session_id, values, commit.awaited(values))
            return
        # The values join those staged before and commit the same way.
        for key, data in values.items():
            blob = _store_value(step.db, data)
            self._stage(step, commit.task_id, key, blob.blob_id, blob.size)
        step.commit_staged_results(commit.task_id, commit.session_id)

    def fail(
        self,
        attempt: Attempt,
        error: str,
        status: TaskStatus,
        started_at: float | None = None,
    ) -> TaskRecord:
        with self._transaction() as db:
            step = _Transition(db)
            if started_at is not None:
                _record_start(db, attempt, started_at)
            row = step.attempt(attempt)
            return task_record(step.fail(row, error, status))

    def release(self, attempt: Attempt) -> None:
        with self._transaction() as db:
            step = _Transition(db)
            row = step.attempt(attempt, cancelling_ok=True)
            if row["status"] == TaskStatus.CANCELLING:
                step.end_cancelled(row)
                return
            step.discard_staged(row["task_id"])
            db.execute(
                f"UPDATE tasks SET status = {_SUBMITTED}, owner_agent_id = '', "
                "token = NULL, lease_expires_at = NULL, acquired_at = NULL, "
                "started_at = NULL WHERE task_id = ?",
                (row["task_id"],),
            )

    def recover_expired(self, now: float | None) -> list[str]:
        with self._transaction() as db:
            step = _Transition(db)
            if now is not None:
                step.now = now
            expired = db.execute(
                "SELECT * FROM tasks WHERE lease_expires_at < ? "
                f"AND status IN ({_LEASED})",
                (step.now,),
            ).fetchall()
            logs = [_recover(step, row) for row in expired]
        for log in logs:
            log()
        return [row["task_id"] for row in expired]

    def mark_cancelled(self, attempt: Attempt) -> TaskRecord:
        with self._transaction() as db:
            step = _Transition(db)
            row = step.attempt(attempt, cancelling_ok=True)
            if row["status"] != TaskStatus.CANCELLING:
                raise BackendError(
                    f"task {row['task_id']} is not being cancelled; end the attempt "
                    "with complete, fail or release"
                )
            return task_record(step.end_cancelled(row))

    # -- reading and cancelling ---------------------------------------------------

    def get_task(self, task_id: str) -> TaskRecord:
        return task_record(_Transition(self._db).task(task_id))

    def get_result(self, session_id: str, key: str) -> ResultRecord:
        return result_record(self._result_row(session_id, key))

    def _result_row(self, session_id: str, key: str) -> sqlite3.Row:
        # A result that a staged subtask created exists only for its parent's attempt.
        row = _one(
            self._db,
            "SELECT * FROM results WHERE session_id = ? AND key = ? "
            "AND staged_by IS NULL",
            (session_id, key),
        )
        if row is None:
            raise NotFound(f"no result {key!r} in session {session_id}")
        return row

    def open_result(self, session_id: str, key: str) -> tuple[str, int, list[bytes]]:
        row = self._result_row(session_id, key)
        if row["status"] != ResultStatus.COMPLETED:
            status = ResultStatus(row["status"]).name
            raise NotCompleted(
                f"result {key!r} of session {session_id} is {status}: it has no data"
            )
        if row["data"] is not None:
            return "", 1, [row["data"]]
        return self.open_blob(row["blob_id"])

    def cancel_tasks(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        with self._transaction() as db:
            step = _Transition(db)
            for task_id in task_ids:
                step.task(task_id)
            for task_id in dict.fromkeys(task_ids):
                step.cancel(step.task(task_id))
            return [task_record(step.task(task_id)) for task_id in task_ids]

    # -- resources ----------------------------------------------------------------

    def put_resource(self, key: str, data: BlobRef) -> None:
        with self._transaction() as db:
            step = _Transition(db)
            size = step.blob_size(data.blob_id)
            replaced = _column(
                db, "SELECT blob_id FROM resources WHERE key = ?", (key,)
            )
            db.execute(
                "INSERT INTO resources (key, blob_id, size) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE "
                "SET blob_id = excluded.blob_id, size = excluded.size",
                (key, data.blob_id, size),
            )
            step.drop_blobs(b for b in replaced if b != data.blob_id)

    def open_resource(self, key: str) -> tuple[str, int, list[bytes]]:
        blob = _column(self._db, "SELECT blob_id FROM resources WHERE key = ?", (key,))
        if not blob:
            raise NotFound(f"no resource {key!r}")
        return self.open_blob(blob[0])

    def list_resources(self) -> dict[str, int]:
        rows = self._db.execute("SELECT key, size FROM resources ORDER BY key")
        return {key: size for key, size in rows.fetchall()}

    def delete_resource(self, key: str) -> None:
        with self._transaction() as db:
            blob = _column(
                db, "DELETE FROM resources WHERE key = ? RETURNING blob_id", (key,)
            )
            if not blob:
                raise NotFound(f"no resource {key!r}")
            _Transition(db).drop_blobs(blob)


def _seconds_or_none(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _record_start(db: sqlite3.Connection, attempt: Attempt, at: float) -> bool:
    """DISPATCHED -> PROCESSING at ``at``, if the attempt is the task's and was
    not started yet; whether it changed the task."""
    started = db.execute(
        f"UPDATE tasks SET status = {_PROCESSING}, started_at = ? "
        f"WHERE task_id = ? AND token = ? AND status = {_DISPATCHED}",
        (at, attempt.task.task_id, attempt.token),
    )
    return bool(started.rowcount)


def _insert_blob(
    db: sqlite3.Connection, blob_id: str, chunks: list[bytes], size: int
) -> None:
    db.execute(
        "INSERT INTO blobs (blob_id, size, chunk_count) VALUES (?, ?, ?)",
        (blob_id, size, len(chunks)),
    )
    db.executemany(
        "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)",
        [(blob_id, seq, chunk) for seq, chunk in enumerate(chunks)],
    )


def _store_value(db: sqlite3.Connection, data: bytes) -> BlobRef:
    """A value held in memory, stored as a blob of one chunk."""
    blob = BlobRef(uuid.uuid4().hex, len(data))
    _insert_blob(db, blob.blob_id, [data], blob.size)
    return blob


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _check_attempt(
    attempt: Attempt, row: sqlite3.Row | None, *, cancelling_ok: bool = False
) -> sqlite3.Row:
    """``row``, the task's, if the attempt is still the task's; else raise."""
    task_id = attempt.task.task_id
    if (
        row is None
        or row["token"] != attempt.token
        or row["status"] not in _LEASED_STATUSES
    ):
        raise LeaseLost(
            f"the attempt of agent {attempt.agent_id!r} on task {task_id} is no "
            "longer the task's: it ended, or its lease expired and was recovered"
        )
    if row["status"] == TaskStatus.CANCELLING and not cancelling_ok:
        raise TaskCancelled(
            f"task {task_id} was cancelled: stop the attempt and mark it cancelled"
        )
    return row


def _check_owned(
    task_id: str, session_id: str, key: str, result: sqlite3.Row | None
) -> None:
    if result is None:
        raise NotOwned(
            f"task {task_id} cannot send {key!r}: session {session_id} has no such "
            "result"
        )
    if result["owner_task_id"] != task_id:
        raise NotOwned(f"task {task_id} does not own result {key!r}")
    if result["pending_owner"] is not None:
        raise NotOwned(
            f"task {task_id} delegated result {key!r} to task {result['pending_owner']}"
        )
    if result["status"] != ResultStatus.CREATED:
        raise NotOwned(f"result {key!r} is {ResultStatus(result['status']).name}")


def _recover(step: _Transition, row: sqlite3.Row) -> Callable[[], None]:
    """End an expired attempt; what to log once that is committed."""
    task_id, agent_id = row["task_id"], row["owner_agent_id"]
    extra = {
        "task_id": task_id,
        "attempt": len(json.loads(row["retry_of_ids"])) + 1,
        "agent_id": agent_id,
    }
    if row["status"] == TaskStatus.CANCELLING:
        step.end_cancelled(row)
        return functools.partial(
            logger.info,
            "task %s: lease of agent %r expired while cancelling; cancelled",
            task_id,
            agent_id,
            extra=extra,
        )
    message = (
        f"lease expired at {_iso(row['lease_expires_at'])}: agent {agent_id!r} "
        "stopped renewing it"
    )
    retry_id = step.fail(row, message, TaskStatus.ERROR)["task_id"]
    return functools.partial(
        logger.warning,
        "task %s: %s; %s",
        task_id,
        message,
        f"retried as {retry_id}" if retry_id != task_id else "no retry left",
        extra=extra,
    )


def _resolve(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():  # a cancelled caller: the work is done all the same
        future.set_result(result)


def _reject(future: asyncio.Future[_T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _Thread:
    """The backend's own thread, running calls one at a time, or in groups.

    Leaner than a one-thread executor: a call is one queue put and one wake-up of
    the event loop, which matters at several calls per task. Calls that queue up
    while the thread is busy run as one group: one transaction and one commit.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Held while a call uses the connection; with ``_unfinished`` it lets a
        # short call run on the caller's thread when nothing is queued before it.
        self._lock = threading.Lock()
        # Guards only the count, so that queueing a call never waits for the
        # connection (which may be waiting for another process's lock).
        self._count_lock = threading.Lock()
        self._unfinished = 0
        self._group: Callable[[Sequence[Callable[[], Any]]], list[_Outcome]] | None
        self._group = None
        # A daemon, so that a backend never closed does not keep the process alive;
        # a transaction cut short by the exit is rolled back by the next opener.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def group_with(
        self, run_group: Callable[[Sequence[Callable[[], Any]]], list[_Outcome]]
    ) -> None:
        self._group = run_group

    def _serve(self) -> None:
        # A job taken off the queue that could not join the batch before it.
        carried: list[_Job | None] = []
        while True:
            job = carried.pop() if carried else self._jobs.get()
            if job is None:
                return
            batch = [job]
            while job[2] and len(batch) < _GROUP_MAX:
                try:
                    queued = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if queued is None or not queued[2]:
                    carried.append(queued)
                    break
                batch.append(queued)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        with self._lock:
            self._run_locked(batch)
            with self._count_lock:
                self._unfinished -= len(batch)

    def _run_locked(self, batch: list[_Job]) -> None:
        if len(batch) == 1 or self._group is None:
            for fn, deliver, _ in batch:
                try:
                    deliver((True, fn()))
                except BaseException as error:
                    deliver((False, error))
            return
        try:
            outcomes = self._group([fn for fn, _, _ in batch])
        except BaseException as error:
            outcomes = [(False, error)] * len(batch)
        for (_, deliver, _), outcome in zip(batch, outcomes, strict=True):
            deliver(outcome)

    def run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the thread and wait for it, blocking the caller."""
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def deliver(outcome: _Outcome) -> None:
            ok, value = outcome
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

        self._queue((fn, deliver, False))
        return done.result()

    def _queue(self, job: _Job) -> None:
        with self._count_lock:
            self._unfinished += 1
        self._jobs.put(job)

    def try_inline(self, fn: Callable[[], _T]) -> tuple[bool, _T | None]:
        """Run ``fn`` here and now if the connection is free and no call is queued
        before it (calls keep their order); (False, None) if it must queue."""
        if not self._lock.acquire(blocking=False):
            return False, None
        try:
            with self._count_lock:
                queued = self._unfinished
            if queued:
                return False, None
            return True, fn()
        finally:
            self._lock.release()

    async def call(self, fn: Callable[[], _T], *, groupable: bool = True) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def deliver(outcome: _Outcome) -> None:
            ok, value = outcome
            # A closed loop has nobody left to tell.
            with contextlib.suppress(RuntimeError):
                if ok:
                    loop.call_soon_threadsafe(_resolve, future, value)
                else:
                    loop.call_soon_threadsafe(_reject, future, value)

        self._queue((fn, deliver, groupable))
        return await future

    def stop(self) -> None:
        """Let the thread end once the calls queued so far have run."""
        self._jobs.put(None)


class SqliteBackend(Backend):
    """The backend kept in one SQLite file; see the module's documentation."""

    events_in_one_sequence = True
    acquire_batch = _ACQUIRE_BATCH

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: timedelta = timedelta(seconds=30),
        keep_events: int = 1_000_000,
    ) -> None:
        if keep_events < 1:
            raise ValueError(f"keep at least 1 event, not {keep_events}")
        self._path = Path(path)
        self._timeout = busy_timeout.total_seconds()
        self._closed = False
        self._notifier = Notifier(notify_directory(self._path))
        # Started by the first listing or read of events, which most agents never make.
        self._reading: _Thread | None = None
        self._reader: Reader | None = None
        self._thread = _Thread(f"sqlite-backend {self._path.name}")
        try:
            self._store = self._thread.run(
                functools.partial(
                    _Store,
                    self._path,
                    busy_timeout,
                    keep_events,
                    self._notifier.publish,
                )
            )
            self._thread.group_with(self._store.run_group)
        except sqlite3.Error as err:
            self._thread.stop()
            raise BackendError(
                f"cannot open the state file {self._path}: {err}"
            ) from err
        except BaseException:
            self._thread.stop()
            raise

    @classmethod
    def from_url(cls, url: str) -> SqliteBackend:
        """Open ``sqlite://PATH``, or ``sqlite://PATH?events=N`` to keep the newest
        N events (a million by default)."""
        scheme, _, rest = url.partition("://")
        path, _, query = rest.partition("?")
        if scheme != "sqlite" or not path:
            raise ValueError(f"expected sqlite://PATH, got {url!r}")
        parameters = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(parameters) - {"events"})
        if unknown:
            raise ValueError(
                f"unknown parameter {unknown[0]!r} in {url!r}; sqlite:// takes only "
                "events=N, the number of events to keep"
            )
        if "events" not in parameters:
            return cls(path)
        try:
            keep_events = int(parameters["events"])
        except ValueError:
            raise ValueError(
                f"events={parameters['events']!r} in {url!r} is not a number of events"
            ) from None
        return cls(path, keep_events=keep_events)

    async def _call(
        self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if self._closed:
            raise BackendError(f"the backend on {self._path} is closed")
        call = functools.partial(self._store.waiting, fn, *args, **kwargs)
        try:
            return await self._thread.call(call)
        except sqlite3.Error as err:
            raise BackendError(f"the state file {self._path} failed: {err}") from err

    async def _short(
        self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """A call of a few statements: run it on the event loop when the connection
        is idle and the file unlocked, which costs less than a hop to the thread;
        otherwise, or if another process holds the write lock, queue it."""
        if self._closed:
            raise BackendError(f"the backend on {self._path} is closed")
        call = functools.partial(self._store.without_waiting, fn, *args, **kwargs)
        try:
            ran, value = self._thread.try_inline(call)
        except _Locked:
            ran, value = False, None
        except sqlite3.Error as err:
            raise BackendError(f"the state file {self._path} failed: {err}") from err
        if ran:
            return value  # type: ignore[return-value]
        return await self._call(fn, *args, **kwargs)

    async def _read(self, fn: Callable[[Reader], _T]) -> _T:
        """Run ``fn`` on the reading connection, on its thread."""
        if self._closed:
            raise BackendError(f"the backend on {self._path} is closed")
        if self._reading is None:
            self._reading = _Thread(f"sqlite-reader {self._path.name}")
        try:
            return await self._reading.call(functools.partial(self._on_reader, fn))
        except sqlite3.Error as err:
            raise BackendError(f"the state file {self._path} failed: {err}") from err

    def _on_reader(self, fn: Callable[[Reader], _T]) -> _T:
        # Only the reading thread gets here: the connection is made and used there.
        if self._reader is None:
            self._reader = Reader(self._path, self._timeout)
        return fn(self._reader)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notifier.close()
        try:
            await self._stop_reading()
        finally:
            try:
                await self._thread.call(self._store.close, groupable=False)
            finally:
                self._thread.stop()

    async def _stop_reading(self) -> None:
        if self._reading is None:
            return
        try:
            await self._reading.call(self._close_reader)
        finally:
            self._reading.stop()

    # -- sessions -----------------------------------------------------------------

    async def create_session(
        self,
        default_options: objects_pb2.TaskOptions,
        partition_ids: Sequence[str],
        *,
        owner: str = "",
    ) -> SessionRecord:
        return await self._call(
            self._store.create_session, default_options, list(partition_ids), owner
        )

    async def get_session(self, session_id: str) -> SessionRecord:
        return await self._call(self._store.get_session, session_id)

    async def cancel_session(self, session_id: str) -> SessionRecord:
        return await self._call(self._store.cancel_session, session_id)

    # -- blobs --------------------------------------------------------------------

    async def write_blob(
        self, chunks: AsyncIterable[bytes], *, session_id: str | None = None
    ) -> BlobRef:
        # TODO: sweep blobs that nothing ever referenced (a refused stage_result, a
        # writer whose process died mid-blob) once the control plane runs periodic
        # maintenance; until then they stay in the file.
        store, blob_id = self._store, uuid.uuid4().hex
        batch: list[bytes] = []
        batch_size = size = seq = 0
        hopped = False
        try:
            async for chunk in chunks:
                batch.append(bytes(chunk))
                batch_size += len(chunk)
                if batch_size >= _BATCH_BYTES or len(batch) >= _BATCH_CHUNKS:
                    hopped = True
                    await self._call(store.write_chunks, blob_id, seq, batch, None)
                    seq, size = seq + len(batch), size + batch_size
                    batch, batch_size = [], 0
            size += batch_size
            # A blob in one batch is a short call: most payloads and results.
            hop = self._call if hopped else self._short
            hopped = True
            await hop(store.write_chunks, blob_id, seq, batch, size)
        except BaseException:
            # Nobody holds a reference to the blob yet; a hop that was cancelled may
            # still have written its batch.
            if hopped:
                await self._call(store.drop_unfinished_blob, blob_id)
            raise
        return BlobRef(blob_id, size)

    async def _stream(
        self,
        opener: Callable[_P, tuple[str, int, list[bytes]]],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> AsyncIterator[bytes]:
        # The first batch is bounded like every other, and often the whole blob.
        blob_id, count, batch = await self._short(opener, *args, **kwargs)
        seq = 0
        while True:
            seq += len(batch)
            for chunk in batch:
                yield chunk
            if seq >= count:
                return
            batch = await self._call(self._store.chunks, blob_id, seq)
            if not batch:
                raise NotFound(f"blob {blob_id} was deleted while being read")

    async def discard_blobs(self, blob_ids: Iterable[str]) -> None:
        wanted = list(blob_ids)
        if wanted:
            await self._call(self._store.discard_blobs, wanted)

    def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        return self._stream(self._store.open_blob, blob_id)

    # -- creating tasks -----------------------------------------------------------

    async def submit_tasks(
        self,
        session_id: str,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None = None,
    ) -> list[TaskRecord | TaskRefusal]:
        # A few tasks are a short call; a large batch must not hold the event loop.
        hop = self._short if len(tasks) <= _SHORT_SUBMISSION else self._call
        return await hop(self._store.submit_tasks, session_id, tasks, options)

    # -- the agent's side ---------------------------------------------------------

    async def acquire(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        *,
        payload_up_to: int = 0,
    ) -> Attempt | None:
        attempts = await self._take(agent_id, partition_id, lease, payload_up_to, 1)
        return attempts[0] if attempts else None

    async def acquire_many(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        limit: int,
        *,
        payload_up_to: int = 0,
    ) -> list[Attempt]:
        check_batch_size(limit)
        return await self._take(agent_id, partition_id, lease, payload_up_to, limit)

    async def _take(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        payload_up_to: int,
        limit: int,
    ) -> list[Attempt]:
        attempts = await self._short(
            self._store.acquire, agent_id, partition_id, lease, payload_up_to, limit
        )
        return [await self._with_payload(a, payload_up_to) for a in attempts]

    async def _with_payload(self, attempt: Attempt, payload_up_to: int) -> Attempt:
        """The attempt with its payload, if it was asked for and the transaction
        that took the task had no room to read it; read on the backend's thread."""
        payload = attempt.task.payload
        if attempt.payload_data is not None or payload.size > payload_up_to:
            return attempt
        try:
            data = await self._call(self._store.whole_blob, payload.blob_id)
        except BackendError:
            # The task is the caller's already: it streams the payload later.
            logger.warning(
                "reading the payload of task %s failed",
                attempt.task.task_id,
                exc_info=True,
                extra={
                    "task_id": attempt.task.task_id,
                    "attempt": attempt.task.attempt,
                },
            )
            return attempt
        return replace(attempt, payload_data=data)

    async def start(self, attempt: Attempt, at: datetime | None = None) -> None:
        await self._short(self._store.start, attempt, _seconds_or_none(at))

    async def renew(self, attempt: Attempt, lease: timedelta) -> Attempt:
        return await self._short(self._store.renew, attempt, lease)

    async def stage_result_data(
        self, attempt: Attempt, key: str, chunks: AsyncIterable[bytes]
    ) -> BlobRef:
        iterator = aiter(chunks)
        batch: list[bytes] = []
        size = 0
        while size < _BATCH_BYTES and len(batch) < _BATCH_CHUNKS:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                # The common case of a small result: one transaction for it all.
                return await self._short(
                    self._store.stage_small_result,
                    attempt,
                    key,
                    uuid.uuid4().hex,
                    batch,
                    size,
                )
            batch.append(bytes(chunk))
            size += len(chunk)
        # A large result: refuse a key the task does not own before storing data.
        await self._call(self._store.check_owned, attempt, key)
        blob = await self.write_blob(chained(batch, iterator))
        await self.stage_result(attempt, key, blob)
        return blob

    async def stage_result(self, attempt: Attempt, key: str, data: BlobRef) -> None:
        await self._call(self._store.stage_result, attempt, key, data)

    async def stage_subtasks(
        self,
        attempt: Attempt,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None = None,
    ) -> list[TaskRecord | TaskRefusal]:
        return await self._call(self._store.stage_subtasks, attempt, tasks, options)

    async def complete(
        self,
        attempt: Attempt,
        results: Mapping[str, bytes] | None = None,
        *,
        started_at: datetime | None = None,
    ) -> None:
        started = _seconds_or_none(started_at)
        await self._short(self._store.complete, attempt, results, started)

    async def fail(
        self,
        attempt: Attempt,
        error: str,
        status: TaskStatus = TaskStatus.ERROR,
        *,
        started_at: datetime | None = None,
    ) -> TaskRecord:
        if status not in (TaskStatus.ERROR, TaskStatus.TIMEOUT):
            raise ValueError(
                f"a failed attempt ends ERROR or TIMEOUT, not {status.name}"
            )
        started = _seconds_or_none(started_at)
        return await self._call(self._store.fail, attempt, error, status, started)

    async def release(self, attempt: Attempt) -> None:
        await self._short(self._store.release, attempt)

    async def recover_expired(self, now: datetime | None = None) -> list[str]:
        seconds = None if now is None else now.timestamp()
        return await self._call(self._store.recover_expired, seconds)

    # -- reading and cancelling ---------------------------------------------------

    async def get_task(self, task_id: str) -> TaskRecord:
        return await self._short(self._store.get_task, task_id)

    async def get_result(self, session_id: str, key: str) -> ResultRecord:
        return await self._short(self._store.get_result, session_id, key)

    def read_result(self, session_id: str, key: str) -> AsyncIterator[bytes]:
        return self._stream(self._store.open_result, session_id, key)

    async def cancel_tasks(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        return await self._call(self._store.cancel_tasks, list(task_ids))

    async def mark_cancelled(self, attempt: Attempt) -> TaskRecord:
        return await self._short(self._store.mark_cancelled, attempt)

    # -- resources ----------------------------------------------------------------

    async def put_resource(self, key: str, data: BlobRef) -> None:
        await self._call(self._store.put_resource, key, data)

    def read_resource(self, key: str) -> AsyncIterator[bytes]:
        return self._stream(self._store.open_resource, key)

    async def list_resources(self) -> dict[str, int]:
        return await self._call(self._store.list_resources)

    async def delete_resource(self, key: str) -> None:
        await self._call(self._store.delete_resource, key)

    # -- listings, events and wake-ups ---------------------------------------------

    async def list_tasks(self, query: TaskQuery) -> Page[TaskRecord]:
        return await self._read(lambda reader: reader.list_tasks(query))

    async def count_tasks(self, query: TaskQuery) -> dict[TaskStatus, int]:
        return await self._read(lambda reader: reader.count_tasks(query))

    async def list_sessions(self, query: SessionQuery) -> Page[SessionRecord]:
        return await self._read(lambda reader: reader.list_sessions(query))

    async def list_results(self, query: ResultQuery) -> Page[ResultRecord]:
        return await self._read(lambda reader: reader.list_results(query))

    async def list_applications(
        self, query: ApplicationQuery
    ) -> Page[ApplicationRecord]:
        return await self._read(lambda reader: reader.list_applications(query))

    async def read_events(
        self, after: int, *, session_id: str | None = None, limit: int = 1000
    ) -> list[Event]:
        return await self._read(
            lambda reader: reader.read_events(after, session_id, limit)
        )

    async def last_event(self, session_id: str | None = None) -> int:
        # One sequence for all sessions: the newest event is a cursor for any.
        return await self._read(Reader.last_event)

    def subscribe(self, topics: Topic | None = None) -> Subscription:
        if self._closed:
            raise BackendError(f"the backend on {self._path} is closed")
        try:
            listener = self._notifier.listen(Topic.ANY if topics is None else topics)
        except OSError as err:
            raise BackendError(
                f"cannot listen for wake-ups of the state file {self._path}: {err}"
            ) from err
        return _Subscription(listener)


class _Subscription(Subscription):
    """One listener on the wake-up sockets shared by the state file's users."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    async def wait(self, timeout: float | None = None) -> bool:
        return await self._listener.wait(timeout)

    def close(self) -> None:
        self._listener.close()
