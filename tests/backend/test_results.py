"""Reading results: records, data, and the errors for what has none."""

from __future__ import annotations

import pytest

from agent.backend import Backend, NotCompleted, NotFound
from tests.backend.support import new_task, read, session, submit, take


async def test_an_unknown_result_is_not_found(backend: Backend) -> None:
    sid = await session(backend)
    with pytest.raises(NotFound):
        await backend.get_result(sid, "nothing")
    stream = backend.read_result(sid, "nothing")
    with pytest.raises(NotFound):
        await read(stream)
    with pytest.raises(NotFound):
        await read(backend.read_result("no-such-session", "nothing"))


async def test_a_result_without_data_is_not_completed(backend: Backend) -> None:
    sid = await session(backend)
    await submit(
        backend,
        sid,
        await new_task(backend, ["pending"]),
        await new_task(backend, ["x"]),
    )
    with pytest.raises(NotCompleted):
        await read(backend.read_result(sid, "pending"))
    await backend.fail(await take(backend), "boom")
    with pytest.raises(NotCompleted, match="ABORTED"):
        await read(backend.read_result(sid, "pending"))


async def test_an_unknown_task_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.get_task("no-such-task")
