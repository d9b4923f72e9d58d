"""Where the embedded backend keeps a value handed to the commit."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from agent.backend import SqliteBackend
from tests.backend.support import new_task, read, session, submit, take


def _blobs(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count: int = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
        return count


@pytest.mark.parametrize(("size", "new_blobs"), [(0, 0), (1024, 0), (1025, 1)])
async def test_a_value_of_at_most_1_kib_is_kept_in_its_result_s_row(
    tmp_path: Path, size: int, new_blobs: int
) -> None:
    path = tmp_path / "state.db"
    backend = SqliteBackend(path)
    try:
        sid = await session(backend)
        await submit(backend, sid, await new_task(backend, ["out"]))
        attempt = await take(backend)
        before = _blobs(path)

        await backend.complete(attempt, {"out": b"v" * size})

        assert _blobs(path) - before == new_blobs
        assert await read(backend.read_result(sid, "out")) == b"v" * size
    finally:
        await backend.close()
