"""How waits follow the grid: WaitForCompletion counts once and then follows the
event log, and the wake-ups of every wait and watch are throttled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from agent.backend import Event, EventsExpired, Subscription, TaskQuery, TaskStatus
from agent.control import ControlPlaneConfig
from agent.control._watch import Wakeups
from gridpod_api import objects_pb2, task_status_pb2
from tests.control.submitter_support import (
    CONFIG,
    PROMPT,
    Common,
    Grid,
    complete_next,
    create_tasks,
    grid_fixture,  # noqa: F401 - the fixture
    new_session,
    not_yet,
    take,
    task_request,
)

_T = TypeVar("_T")
Filter = Common.TaskFilter
COMPLETED = task_status_pb2.TASK_STATUS_COMPLETED


def by_session(session_id: str) -> Filter:
    return Filter(session=Filter.IdsRequest(ids=[session_id]))


def by_task(*task_ids: str) -> Filter:
    return Filter(task=Filter.IdsRequest(ids=task_ids))


def counts(reply: objects_pb2.Count) -> dict[int, int]:
    return {value.status: value.count for value in reply.values}


def counted(
    monkeypatch: pytest.MonkeyPatch, grid: Grid, name: str
) -> list[dict[str, Any]]:
    """The keyword arguments of each call the control plane makes to ``name``."""
    calls: list[dict[str, Any]] = []
    method: Callable[..., Awaitable[Any]] = getattr(grid.backend, name)

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await method(*args, **kwargs)

    monkeypatch.setattr(grid.backend, name, spy)
    return calls


async def wait_for(grid: Grid, task_filter: Filter) -> asyncio.Future[Any]:
    request = Common.WaitRequest(filter=task_filter)
    call = asyncio.ensure_future(grid.stub.WaitForCompletion(request))
    await not_yet(call, 0.1)
    return call


async def test_a_wait_counts_once_then_follows_the_log(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await new_session(grid)
    tasks = [task_request([f"k{index}"]) for index in range(20)]
    await create_tasks(grid, session_id, *tasks)
    count_calls = counted(monkeypatch, grid, "count_tasks")
    call = await wait_for(grid, by_session(session_id))
    for _ in tasks:
        await complete_next(grid.backend)
        # Long enough for the wait to wake between two tasks.
        await asyncio.sleep(0.01)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {COMPLETED: 20}
    # The first count, and the one that confirms the end; not one per wake-up.
    assert len(count_calls) <= 3


async def test_a_wait_includes_tasks_created_while_it_waits(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]))
    call = await wait_for(grid, by_session(session_id))
    await create_tasks(grid, session_id, task_request(["b"]))
    await complete_next(grid.backend)
    await not_yet(call)
    await complete_next(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {COMPLETED: 2}


async def test_a_wait_on_tasks_reads_the_events_of_their_session(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await new_session(grid)
    first, second, _ = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"]), task_request(["c"])
    )
    reads = counted(monkeypatch, grid, "read_events")
    call = await wait_for(grid, by_task(first, second))
    await complete_next(grid.backend)
    await not_yet(call)
    await complete_next(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {COMPLETED: 2}
    assert reads
    assert {read["session_id"] for read in reads} == {session_id}


async def test_a_wait_on_tasks_of_several_sessions(grid: Grid) -> None:
    one, other = await new_session(grid), await new_session(grid)
    [first] = await create_tasks(grid, one, task_request(["a"]))
    [second] = await create_tasks(grid, other, task_request(["b"]))
    call = await wait_for(grid, by_task(first, second, "ghost"))
    await complete_next(grid.backend)
    await not_yet(call)
    await complete_next(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {COMPLETED: 2}


async def test_a_wait_filtered_by_status_counts_on_each_change(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    task_filter = by_session(session_id)
    task_filter.included.statuses.append(task_status_pb2.TASK_STATUS_SUBMITTED)
    call = await wait_for(grid, task_filter)
    await take(grid.backend)
    await not_yet(call)
    # The last SUBMITTED task leaves the selection: none is left to wait for.
    await take(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {}


async def test_a_wait_counts_again_after_expired_events(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    call = await wait_for(grid, by_session(session_id))
    read_events = grid.backend.read_events

    async def expired(after: int, **kwargs: Any) -> list[Event]:
        monkeypatch.setattr(grid.backend, "read_events", read_events)
        raise EventsExpired("dropped by retention")

    monkeypatch.setattr(grid.backend, "read_events", expired)
    await complete_next(grid.backend)
    await not_yet(call)
    await complete_next(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {COMPLETED: 2}
    assert await grid.backend.count_tasks(TaskQuery(session_ids=[session_id])) == {
        TaskStatus.COMPLETED: 2
    }


# -- wake-ups -----------------------------------------------------------------------


class _Restless(Subscription):
    """A subscription that always has a change to report."""

    async def wait(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


def restless(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid.backend, "subscribe", lambda topics=None: _Restless())


async def timed(call: Awaitable[_T]) -> float:
    started = time.monotonic()
    await call
    return time.monotonic() - started


async def test_wake_ups_keep_to_the_requery_interval(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    restless(grid, monkeypatch)
    config = replace(CONFIG, requery_interval=0.02)
    wake_ups = 0
    with Wakeups(grid.backend, config) as wakeups:
        ends = time.monotonic() + 0.3
        while time.monotonic() < ends:
            await wakeups.next()
            wake_ups += 1
    # A short burst, then one per interval; a slow machine only makes fewer.
    assert wake_ups <= 0.3 / 0.02 + 4


async def test_a_costly_read_is_followed_by_a_longer_pause(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    restless(grid, monkeypatch)
    config = replace(CONFIG, requery_interval=0.001)
    with Wakeups(grid.backend, config) as wakeups:
        with wakeups.reading():
            await asyncio.sleep(0.05)
        assert await timed(wakeups.next()) >= 0.15


async def test_a_long_wait_reads_again_less_often(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    restless(grid, monkeypatch)
    config = replace(CONFIG, requery_interval=0.001, requery_share=0.5)
    wake_ups = 0
    with Wakeups(grid.backend, config, patient=True) as wakeups:
        await asyncio.sleep(0.2)
        ends = time.monotonic() + 0.2
        while time.monotonic() < ends:
            await wakeups.next()
            wake_ups += 1
    # Waited 0.2 s and more: at least 0.1 s between reads after the first burst,
    # where a call that expects a stream of answers would read 200 times.
    assert wake_ups <= 6


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_the_requery_share_is_a_fraction(share: float) -> None:
    with pytest.raises(ValueError, match="requery_share"):
        ControlPlaneConfig(requery_share=share)
