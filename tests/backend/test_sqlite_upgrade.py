"""Opening a state file of an earlier schema version."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from agent.backend import (
    ApplicationQuery,
    ApplicationRecord,
    BackendError,
    EventKind,
    SessionQuery,
    SqliteBackend,
    TaskQuery,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend.support import chunks, new_task, read, session, submit, take

# What version 4 added, undone: the file a version 3 agent left.
_BACK_TO_VERSION_3 = (
    "ALTER TABLE results DROP COLUMN data",
    "PRAGMA user_version = 3",
)
# What version 3 added, undone: the file a version 2 agent left.
_BACK_TO_VERSION_2 = (
    *_BACK_TO_VERSION_3,
    "ALTER TABLE sessions DROP COLUMN owner",
    "PRAGMA user_version = 2",
)
# What versions 2 and 3 added, undone: the file a version 1 agent left.
_BACK_TO_VERSION_1 = (
    *_BACK_TO_VERSION_2,
    "DROP TABLE events",
    "DROP INDEX tasks_by_application",
    *(
        f"ALTER TABLE tasks DROP COLUMN application_{field}"
        for field in ("name", "version", "namespace", "service")
    ),
    "ALTER TABLE sessions DROP COLUMN application_name",
    "ALTER TABLE sessions DROP COLUMN application_version",
    "PRAGMA user_version = 1",
)


def _columns(path: Path) -> dict[str, set[tuple[str, str]]]:
    """Each table's columns (name, type), as the file has them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {
            table: {(c[1], c[2]) for c in db.execute(f"PRAGMA table_info({table})")}
            for (table,) in tables.fetchall()
        }


def _rewrite(path: Path, statements: tuple[str, ...]) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in statements:
            db.execute(statement)


async def test_a_version_1_file_is_upgraded_with_its_applications(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    backend = SqliteBackend(path)
    app = objects_pb2.TaskOptions(application_name="pricer", application_version="3")
    sid = await session(backend, app)
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    await backend.close()
    _rewrite(path, _BACK_TO_VERSION_1)

    upgraded = SqliteBackend(path)
    try:
        applications = await upgraded.list_applications(ApplicationQuery())
        assert applications.items == [ApplicationRecord("pricer", "3", "", "")]
        sessions = await upgraded.list_sessions(SessionQuery(application_version="3"))
        assert [s.session_id for s in sessions.items] == [sid]
        counts = await upgraded.count_tasks(TaskQuery(session_ids=[sid]))
        assert counts == {TaskStatus.SUBMITTED: 1}
        # The log starts empty, with the first change after the upgrade.
        assert await upgraded.last_event() == 0
        await take(upgraded)
        events = await upgraded.read_events(0)
        assert [(e.seq, e.kind, e.task_id, e.status) for e in events] == [
            (1, EventKind.TASK_STATUS, task.task_id, TaskStatus.DISPATCHED),
            (2, EventKind.TASK_STATUS, task.task_id, TaskStatus.PROCESSING),
        ]
    finally:
        await upgraded.close()


async def test_a_version_2_file_is_upgraded_with_sessions_of_no_owner(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    backend = SqliteBackend(path)
    sid = await session(backend)
    await backend.close()
    _rewrite(path, _BACK_TO_VERSION_2)

    upgraded = SqliteBackend(path)
    try:
        assert (await upgraded.get_session(sid)).owner == ""
        created = await upgraded.create_session(
            objects_pb2.TaskOptions(), (), owner="alice"
        )
        owned = await upgraded.list_sessions(SessionQuery(owners=["alice"]))
        assert [s.session_id for s in owned.items] == [created.session_id]
    finally:
        await upgraded.close()


async def test_a_version_3_file_is_upgraded_with_its_values_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    backend = SqliteBackend(path)
    sid = await session(backend)
    await submit(
        backend,
        sid,
        await new_task(backend, ["before"]),
        await new_task(backend, ["after"]),
    )
    # Version 3 kept every value in a blob.
    attempt = await take(backend)
    await backend.stage_result_data(attempt, "before", chunks(b"in a blob"))
    await backend.complete(attempt)
    await backend.close()
    _rewrite(path, _BACK_TO_VERSION_3)

    upgraded = SqliteBackend(path)
    try:
        assert await read(upgraded.read_result(sid, "before")) == b"in a blob"
        await upgraded.complete(await take(upgraded), {"after": b"small"})
        assert await read(upgraded.read_result(sid, "after")) == b"small"
    finally:
        await upgraded.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)


@pytest.mark.parametrize(
    "back", [_BACK_TO_VERSION_1, _BACK_TO_VERSION_2, _BACK_TO_VERSION_3]
)
async def test_an_upgraded_file_has_the_tables_of_a_new_one(
    tmp_path: Path, back: tuple[str, ...]
) -> None:
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    await SqliteBackend(fresh).close()
    await SqliteBackend(old).close()
    _rewrite(old, back)
    assert _columns(old) != _columns(fresh)

    await SqliteBackend(old).close()

    assert _columns(old) == _columns(fresh)


@pytest.mark.parametrize("version", [99, -1])
def test_a_file_of_an_unknown_version_is_refused(tmp_path: Path, version: int) -> None:
    path = tmp_path / "state.db"
    _rewrite(path, (f"PRAGMA user_version = {version}",))

    with pytest.raises(BackendError, match=f"schema version {version}"):
        SqliteBackend(path)
