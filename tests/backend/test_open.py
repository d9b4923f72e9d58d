"""Opening a backend from its URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.backend import SqliteBackend, open_backend
from gridpod_api import objects_pb2


async def test_an_absolute_sqlite_url_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested.db"
    backend = open_backend(f"sqlite://{path}")
    try:
        assert isinstance(backend, SqliteBackend)
        created = await backend.create_session(objects_pb2.TaskOptions(), [])
    finally:
        await backend.close()
    reopened = open_backend(f"sqlite://{path}")
    try:
        assert (await reopened.get_session(created.session_id)) == created
    finally:
        await reopened.close()
    assert path.is_file()


async def test_a_relative_sqlite_url_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend("sqlite://state.db")
    await backend.close()
    assert (tmp_path / "state.db").is_file()


@pytest.mark.parametrize(
    ("url", "named"),
    [("redis-cluster://host", "'redis-cluster'"), ("state.db", "no scheme")],
)
def test_an_unsupported_url_names_what_is_supported(url: str, named: str) -> None:
    with pytest.raises(ValueError, match="sqlite://") as refused:
        open_backend(url)
    assert named in str(refused.value)


def test_an_empty_sqlite_path_is_refused() -> None:
    with pytest.raises(ValueError, match="sqlite://PATH"):
        open_backend("sqlite://")
