"""The blocking client, over the same control plane as the asyncio one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.client.support import CHUNK_SIZE, PlaneThread, failing, unused_address
from worker_sdk.client import (
    Client,
    ControlPlaneUnavailable,
    NotFoundError,
    ResultAborted,
    ResultStatus,
    SessionCancelledError,
    TaskOptions,
    TaskSpec,
    TaskStatus,
)


def test_submit_wait_and_read_back(
    plane: PlaneThread, sync_client: Client, tmp_path: Path
) -> None:
    session = sync_client.create_session(TaskOptions(options={"kernel": "echo"}))
    payload = bytes(range(256)) * 1_000
    small, large = session.submit([TaskSpec(b"hello"), TaskSpec(payload)])
    plane.work()
    assert session.wait() == {TaskStatus.COMPLETED: 2}
    assert session.result(small.output) == b"hello"
    chunks = list(session.stream_result(large.output))
    assert b"".join(chunks) == payload
    assert max(len(chunk) for chunk in chunks) == CHUNK_SIZE
    assert session.result_to(large.output, tmp_path / "large") == len(payload)
    assert session.task_status([small.task_id]) == {small.task_id: TaskStatus.COMPLETED}
    assert sync_client.open_session(session.session_id).result(small.output) == (
        b"hello"
    )


def test_a_watch_ends_when_its_iterator_is_closed(
    plane: PlaneThread, sync_client: Client
) -> None:
    session = sync_client.create_session()
    [task] = session.submit([TaskSpec(b"x")])
    watch = session.watch([task.output])
    assert next(watch) == (task.output, ResultStatus.CREATED)
    watch.close()
    plane.work()
    assert session.wait_for_results([task.output], timeout=10) == {
        task.output: ResultStatus.COMPLETED
    }


def test_errors_are_raised_as_by_the_asyncio_client(
    plane: PlaneThread, sync_client: Client
) -> None:
    with pytest.raises(NotFoundError, match="opening session nosuch"):
        sync_client.open_session("nosuch")
    session = sync_client.create_session()
    [task] = session.submit([TaskSpec(b"x")])
    plane.work(failing)
    with pytest.raises(ResultAborted, match="kernel failed on"):
        session.result(task.output)
    session.cancel()
    with pytest.raises(SessionCancelledError):
        session.submit([TaskSpec(b"y")])


def test_an_unreachable_control_plane_is_unavailable() -> None:
    with (
        Client(unused_address(), call_timeout=2) as client,
        pytest.raises(ControlPlaneUnavailable),
    ):
        client.create_session()


def test_closing_the_client_ends_its_thread(plane: PlaneThread) -> None:
    before = {t.ident for t in threading.enumerate()}
    with Client(plane.address) as client:
        client.configuration()
        started = [t for t in threading.enumerate() if t.ident not in before]
        assert [t.name for t in started] == ["gridpod-client"]
    assert not started[0].is_alive()
    client.close()
