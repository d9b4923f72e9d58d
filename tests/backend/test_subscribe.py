"""Wake-ups: a subscription hears of the commits of other instances and processes."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator

import pytest

from agent.backend import Backend, MissingOutputs, ResultStatus, Topic
from tests.backend import support
from tests.backend.support import SharedState, finish, new_task, session, submit, take

# Long enough for a wake-up that must come, short enough to wait for one that must not.
COMES = 10
NEVER = 0.3


@pytest.fixture
async def other(state: SharedState) -> AsyncIterator[Backend]:
    """A second instance on the test's state, as another agent would open it."""
    opened = state.open()
    yield opened
    await opened.close()


async def test_queueing_a_task_wakes_a_queue_subscription(
    backend: Backend, other: Backend
) -> None:
    sid = await session(other)
    with backend.subscribe(Topic.QUEUE) as subscription:
        await submit(other, sid, await new_task(other, ["out"]))

        assert await subscription.wait(COMES)
        # Wake-ups coalesce: the change was heard once, and nothing came since.
        assert not await subscription.wait(NEVER)


async def test_completing_a_task_wakes_a_state_subscription(
    backend: Backend, other: Backend
) -> None:
    sid = await session(other)
    await submit(other, sid, await new_task(other, ["out"]))
    attempt = await take(other)
    with backend.subscribe(Topic.STATE) as subscription:
        await finish(other, attempt)

        assert await subscription.wait(COMES)


async def test_a_queue_subscription_sleeps_through_other_changes(
    backend: Backend, other: Backend
) -> None:
    sid = await session(other)
    await submit(other, sid, await new_task(other, ["out"]))
    attempt = await take(other)
    with backend.subscribe(Topic.QUEUE) as subscription:
        await session(other)
        await finish(other, attempt)
        await other.cancel_session(sid)

        assert not await subscription.wait(NEVER)

        await submit(other, await session(other), await new_task(other, ["next"]))
        assert await subscription.wait(COMES)


async def test_a_subscription_to_every_topic_wakes_on_any_change(
    backend: Backend, other: Backend
) -> None:
    with backend.subscribe() as subscription:
        await session(other)

        assert await subscription.wait(COMES)


async def test_refused_work_wakes_nobody(backend: Backend, other: Backend) -> None:
    sid = await session(other)
    await submit(other, sid, await new_task(other, ["out"]))
    attempt = await take(other)
    with backend.subscribe() as subscription:
        # Wake-ups of the commits above may still be on their way.
        while await subscription.wait(NEVER):
            pass
        with pytest.raises(MissingOutputs):
            await other.complete(attempt)

        assert not await subscription.wait(NEVER)


async def test_an_instance_hears_its_own_commits(backend: Backend) -> None:
    with backend.subscribe(Topic.QUEUE) as subscription:
        await submit(backend, await session(backend), await new_task(backend, ["out"]))

        assert await subscription.wait(COMES)
    subscription.close()  # closing again is harmless


async def test_a_wake_up_comes_from_another_process(
    state: SharedState, backend: Backend
) -> None:
    sid = await session(backend)
    spawn = multiprocessing.get_context("spawn")
    report = spawn.Queue()
    child = spawn.Process(
        target=support.submit_in_process, args=(state.url, sid, "out", report)
    )
    with backend.subscribe(Topic.QUEUE) as subscription:
        child.start()
        try:
            assert await subscription.wait(COMES)
            assert await asyncio.to_thread(report.get, timeout=COMES) == ""
        finally:
            child.join(timeout=COMES)
            if child.is_alive():
                child.kill()

    assert (await backend.get_result(sid, "out")).status == ResultStatus.CREATED
    assert child.exitcode == 0
