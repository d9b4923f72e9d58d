"""Agents that die, freeze or are told to stop while their task runs, on Redis.

A pod's lease is 1 s (``Pod``'s default), renewed every third of it, unless the
test loses no lease on purpose.
"""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.backend import Attempt, LeaseLost, TaskRecord, TaskStatus
from tests.agent.conftest import Grid, Pod, options
from tests.redis.conftest import (
    LONG_LEASE,
    pod_named,
    session_events,
    start_pods,
    statuses_by_task,
    wait_for,
)

_DISPATCHED, _PROCESSING = TaskStatus.DISPATCHED, TaskStatus.PROCESSING
_SUBMITTED, _COMPLETED = TaskStatus.SUBMITTED, TaskStatus.COMPLETED
_LEASE_LOST = re.compile(
    r"WARNING agent\._loop: task \S+: (lease lost, attempt abandoned|commit "
    r"refused, the lease was lost)"
)


async def _holder(grid: Grid, task: TaskRecord) -> tuple[TaskRecord, Pod]:
    """The task once it runs, and the pod running it."""
    running = await grid.task_when(task.task_id, lambda t: t.status == _PROCESSING)
    return running, pod_named(grid, running.owner_agent_id)


def _other(pods: list[Pod], pod: Pod) -> Pod:
    [other] = [each for each in pods if each is not pod]
    return other


async def _exit_code(pod: Pod) -> int:
    assert pod.agent is not None
    return await asyncio.to_thread(pod.agent.wait, 30)


async def _changes(grid: Grid, session: str) -> dict[str, list[TaskStatus]]:
    return statuses_by_task(await session_events(grid.backend, session))


async def test_a_killed_agents_task_is_retried_elsewhere_and_its_commit_refused(
    redis_grid: Grid, tmp_path: Path
) -> None:
    grid = redis_grid
    pods = start_pods(grid, 2)
    session = await grid.session()
    marker = tmp_path / "token"
    first = await grid.submit(
        session, str(marker).encode(), ["out"], options("hold", max_retries=1)
    )
    await wait_for(marker.exists)
    running, holder = await _holder(grid, first)
    holder.kill("agent")  # SIGKILL: the lease is renewed no more

    assert await grid.value(session, "out") == b"held"
    lost = await grid.backend.get_task(first.task_id)
    assert lost.status == TaskStatus.ERROR
    assert "lease expired" in lost.status_message
    assert repr(holder.name) in lost.status_message
    retry = await grid.backend.get_task(
        (await grid.backend.get_result(session, "out")).owner_task_id
    )
    assert retry.retry_of_ids == (first.task_id,)
    assert retry.status == _COMPLETED
    assert retry.owner_agent_id == _other(pods, holder).name

    # The first attempt as the killed agent held it (its worker wrote the token)
    # comes back too late: nothing it sends is taken.
    now = datetime.now(timezone.utc)
    late = Attempt(running, holder.name, marker.read_text(), now)
    with pytest.raises(LeaseLost):
        await grid.backend.complete(late, {"out": b"late"})
    with pytest.raises(LeaseLost):
        await grid.backend.renew(late, timedelta(seconds=30))
    assert await grid.value(session, "out") == b"held"
    changes = await _changes(grid, session)
    assert changes[first.task_id] == [_DISPATCHED, _PROCESSING, TaskStatus.ERROR]
    assert changes[retry.task_id] == [_DISPATCHED, _PROCESSING, _COMPLETED]


async def test_a_frozen_agent_that_wakes_after_recovery_commits_nothing(
    redis_grid: Grid,
) -> None:
    grid = redis_grid
    pods = start_pods(grid, 2)
    session = await grid.session()
    first = await grid.submit(
        session, b"1.5:once", ["out"], options("nap", max_retries=1)
    )
    _, holder = await _holder(grid, first)
    assert holder.agent is not None
    # Stopped, not killed: its worker finishes the task, and the agent has the
    # reply to commit once it runs again, after another agent took the task over.
    holder.agent.send_signal(signal.SIGSTOP)
    try:
        await grid.task_when(first.task_id, lambda t: t.status.is_final)
        assert await grid.value(session, "out") == b"once done"
    finally:
        holder.agent.send_signal(signal.SIGCONT)
    # Its lease renewal or its commit, whichever it tries first, is refused.
    log = holder.folder / "agent.log"
    await wait_for(lambda: _LEASE_LOST.search(log.read_text()) is not None)

    lost = await grid.backend.get_task(first.task_id)
    assert lost.status == TaskStatus.ERROR, lost
    assert "lease expired" in lost.status_message
    owner = (await grid.backend.get_result(session, "out")).owner_task_id
    retry = await grid.backend.get_task(owner)
    assert retry.retry_of_ids == (first.task_id,)
    assert retry.owner_agent_id == _other(pods, holder).name
    # The agent that woke up is sound: alone now, it takes the next task.
    holder.wait_ready()
    _other(pods, holder).stop()
    after = await grid.submit(session, b"", ["next"], options("echo"))
    assert await grid.value(session, "next") == b""
    assert (await grid.backend.get_task(after.task_id)).owner_agent_id == holder.name


async def test_sigterm_lets_the_running_task_finish_and_releases_the_next(
    redis_grid: Grid,
) -> None:
    grid = redis_grid
    [pod] = start_pods(grid, 1, "--grace-period", "10", *LONG_LEASE)
    session = await grid.session()
    running = await grid.submit(session, b"1.5:drained", ["out"], options("nap"))
    ahead = await grid.submit(session, b"0:ahead", ["ahead"], options("nap"))
    await grid.task_when(running.task_id, lambda t: t.status == _PROCESSING)
    # Read ahead while the first runs: held, not started.
    await grid.task_when(ahead.task_id, lambda t: t.status == _DISPATCHED)
    assert pod.agent is not None
    pod.agent.send_signal(signal.SIGTERM)
    assert await _exit_code(pod) == 0, pod.logs()

    finished = await grid.backend.get_task(running.task_id)
    assert finished.status == _COMPLETED
    assert finished.retry_of_ids == ()
    assert finished.owner_agent_id == pod.name
    assert await grid.value(session, "out") == b"drained done"
    released = await grid.backend.get_task(ahead.task_id)
    assert released.status == _SUBMITTED
    assert released.retry_of_ids == ()
    assert released.owner_agent_id == ""
    changes = await _changes(grid, session)
    assert changes[running.task_id] == [_DISPATCHED, _PROCESSING, _COMPLETED]
    assert changes[ahead.task_id] == [_DISPATCHED, _SUBMITTED]


async def test_sigterm_past_the_grace_period_hands_tasks_over_without_a_retry(
    redis_grid: Grid, tmp_path: Path
) -> None:
    grid = redis_grid
    [draining] = start_pods(grid, 1, "--grace-period", "0.3", *LONG_LEASE)
    session = await grid.session()
    marker = tmp_path / "token"
    held = await grid.submit(session, str(marker).encode(), ["out"], options("hold"))
    ahead = await grid.submit(session, b"0:ahead", ["ahead"], options("nap"))
    await wait_for(marker.exists)
    await grid.task_when(ahead.task_id, lambda t: t.status == _DISPATCHED)
    [taker] = start_pods(grid, 1, *LONG_LEASE)
    assert draining.agent is not None
    draining.agent.send_signal(signal.SIGTERM)
    assert await _exit_code(draining) == 0, draining.logs()

    assert await grid.value(session, "out") == b"held"
    assert await grid.value(session, "ahead") == b"ahead done"
    for task in (held, ahead):
        record = await grid.backend.get_task(task.task_id)
        assert record.status == _COMPLETED
        assert record.retry_of_ids == ()
        assert record.owner_agent_id == taker.name
    changes = await _changes(grid, session)
    assert changes[held.task_id] == [
        *(_DISPATCHED, _PROCESSING, _SUBMITTED),
        *(_DISPATCHED, _PROCESSING, _COMPLETED),
    ]
    assert changes[ahead.task_id] == [
        *(_DISPATCHED, _SUBMITTED),
        *(_DISPATCHED, _PROCESSING, _COMPLETED),
    ]
