"""The embedded backend's event log: its retention, and what a group commit keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.backend import (
    BackendError,
    EventsExpired,
    NewTask,
    SqliteBackend,
    Topic,
    open_backend,
)
from agent.backend import sqlite as sqlite_backend
from tests.backend.support import blob, new_task, session, submit

KEPT = 10


async def _submit_one_by_one(backend: SqliteBackend, count: int) -> str:
    """``count`` tasks of one output each, one submission each: two events each."""
    sid = await session(backend)
    for number in range(count):
        await submit(backend, sid, await new_task(backend, [f"o{number}"]))
    return sid


@pytest.mark.parametrize("opened_from", ["argument", "url"])
async def test_the_oldest_events_are_dropped_and_reading_them_refused(
    tmp_path: Path, opened_from: str
) -> None:
    path = tmp_path / "state.db"
    backend = (
        SqliteBackend(path, keep_events=KEPT)
        if opened_from == "argument"
        else open_backend(f"sqlite://{path}?events={KEPT}")
    )
    assert isinstance(backend, SqliteBackend)
    try:
        sid = await _submit_one_by_one(backend, 8)
        last = await backend.last_event()
        assert last == 16

        kept = await backend.read_events(last - KEPT)
        assert [e.seq for e in kept] == list(range(last - KEPT + 1, last + 1))
        with pytest.raises(EventsExpired):
            await backend.read_events(last - KEPT - 1)
        with pytest.raises(EventsExpired):
            await backend.read_events(0, session_id=sid)
        assert await backend.read_events(last) == []
    finally:
        await backend.close()


async def test_events_are_kept_until_there_are_too_many(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "state.db", keep_events=KEPT)
    try:
        await _submit_one_by_one(backend, 5)

        assert [e.seq for e in await backend.read_events(0)] == list(range(1, 11))
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("query", "named"),
    [("events=many", "'many'"), ("kept=3", "'kept'"), ("events=0", "at least 1")],
)
def test_a_bad_url_parameter_is_refused(tmp_path: Path, query: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SqliteBackend.from_url(f"sqlite://{tmp_path / 'state.db'}?{query}")


async def test_a_call_rolled_back_in_a_group_leaves_no_event_and_no_wake_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SqliteBackend(tmp_path / "state.db")
    try:
        sid = await session(backend)
        good, bad = await blob(backend, b"good"), await blob(backend, b"bad")
        last = await backend.last_event()
        store = backend._store
        published: list[int] = []
        monkeypatch.setattr(store._wakeups, "_publish", published.append)
        real_blob_size = sqlite_backend._Transition.blob_size

        def blob_size(step: sqlite_backend._Transition, blob_id: str) -> int:
            if blob_id == bad.blob_id:
                raise RuntimeError("the disk went away")
            return real_blob_size(step, blob_id)

        monkeypatch.setattr(sqlite_backend._Transition, "blob_size", blob_size)

        # The failing call has stored a task (and its events) when it fails.
        outcomes = store.run_group(
            [
                lambda: store.submit_tasks(
                    sid, [NewTask(good, ["first"]), NewTask(bad, ["second"])], None
                ),
                lambda: store.cancel_session(sid),
            ]
        )

        assert [ok for ok, _ in outcomes] == [False, True]
        assert published == [Topic.STATE]
        assert await backend.read_events(last) == []
        with pytest.raises(BackendError):
            await backend.get_result(sid, "first")
    finally:
        await backend.close()
