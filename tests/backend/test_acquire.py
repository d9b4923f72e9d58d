"""Taking tasks from the queue, starting them and renewing their leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from agent.backend import (
    Attempt,
    Backend,
    LeaseLost,
    NewTask,
    TaskCancelled,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend.support import (
    AGENT,
    LEASE,
    blob,
    later,
    new_task,
    session,
    submit,
    take,
)


async def test_nothing_queued_gives_none(backend: Backend) -> None:
    assert await backend.acquire(AGENT, "", LEASE) is None
    sid = await session(backend)
    await submit(
        backend,
        sid,
        await new_task(backend, ["first"]),
        await new_task(backend, ["waits"], ["first"]),
    )
    await take(backend)
    assert await backend.acquire(AGENT, "", LEASE) is None


async def test_higher_priority_first_then_older(backend: Backend) -> None:
    sid = await session(backend)
    low = objects_pb2.TaskOptions(priority=1)
    high = objects_pb2.TaskOptions(priority=7)
    [old_low] = await submit(backend, sid, await new_task(backend, ["a"]), options=low)
    [new_high] = await submit(
        backend, sid, await new_task(backend, ["b"]), options=high
    )
    batch = await submit(
        backend,
        sid,
        await new_task(backend, ["c"]),
        await new_task(backend, ["d"]),
        options=low,
    )

    order = [(await take(backend)).task.task_id for _ in range(4)]

    assert order == [new_high.task_id, old_low.task_id] + [t.task_id for t in batch]


async def test_a_session_of_higher_priority_is_served_first(backend: Backend) -> None:
    low = objects_pb2.TaskOptions(priority=1)
    high = objects_pb2.TaskOptions(priority=7)
    first, second = await session(backend, low), await session(backend, high)
    early = await submit(
        backend, first, *[await new_task(backend, [f"a{n}"]) for n in range(4)]
    )
    late = await submit(
        backend, second, *[await new_task(backend, [f"b{n}"]) for n in range(2)]
    )

    order = [(await take(backend)).task.session_id for _ in range(6)]

    assert order == [second] * len(late) + [first] * len(early)


async def test_a_higher_priority_arriving_overtakes_within_a_task(
    backend: Backend,
) -> None:
    """A backend may hand out one more task of the session it was serving (Redis
    learns of the other session along with that acquire), never more."""
    low = objects_pb2.TaskOptions(priority=1)
    high = objects_pb2.TaskOptions(priority=7)
    first, second = await session(backend, low), await session(backend, high)
    await submit(
        backend, first, *[await new_task(backend, [f"a{n}"]) for n in range(5)]
    )
    await take(backend)
    await submit(
        backend, second, *[await new_task(backend, [f"b{n}"]) for n in range(2)]
    )

    order = [(await take(backend)).task.session_id for _ in range(6)]

    assert order in (
        [second, second, first, first, first, first],
        [first, second, second, first, first, first],
    )


async def test_partitions_are_separate_queues(backend: Backend) -> None:
    sid = await session(backend, partitions=["cpu", "gpu"])
    gpu = objects_pb2.TaskOptions(partition_id="gpu")
    [task] = await submit(backend, sid, await new_task(backend, ["x"]), options=gpu)

    assert await backend.acquire(AGENT, "cpu", LEASE) is None
    attempt = await backend.acquire(AGENT, "gpu", LEASE)

    assert attempt is not None
    assert attempt.task.task_id == task.task_id


async def test_an_acquired_task_is_dispatched_to_its_agent(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    before = datetime.now(timezone.utc)

    attempt = await backend.acquire("agent-7", "", timedelta(seconds=60))

    assert attempt is not None
    assert attempt.agent_id == "agent-7"
    assert attempt.task.status == TaskStatus.DISPATCHED
    assert attempt.task.attempt == 1
    assert len(attempt.token) >= 40
    assert attempt.lease_expires_at - before >= timedelta(seconds=59)
    record = await backend.get_task(task.task_id)
    assert record.status == TaskStatus.DISPATCHED
    assert record.owner_agent_id == "agent-7"
    assert record.acquired_at is not None
    assert await backend.acquire("agent-8", "", LEASE) is None


async def test_every_attempt_gets_a_fresh_token(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["x"]))
    first = await take(backend)
    await backend.release(first)
    second = await take(backend)
    assert second.task.task_id == first.task.task_id
    assert second.token != first.token


async def test_start_makes_it_processing(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await backend.acquire(AGENT, "", LEASE)
    assert attempt is not None

    await backend.start(attempt)

    record = await backend.get_task(task.task_id)
    assert record.status == TaskStatus.PROCESSING
    assert record.started_at is not None


async def test_start_of_a_released_attempt_is_refused(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await backend.acquire(AGENT, "", LEASE)
    assert attempt is not None
    await backend.release(attempt)

    with pytest.raises(LeaseLost):
        await backend.start(attempt)
    assert (await backend.get_task(task.task_id)).status == TaskStatus.SUBMITTED


async def test_start_again_changes_nothing(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await take(backend)
    started = await backend.get_task(task.task_id)

    await backend.start(attempt)

    assert await backend.get_task(task.task_id) == started


async def test_start_of_a_cancelled_task_says_so(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await backend.acquire(AGENT, "", LEASE)
    assert attempt is not None
    await backend.cancel_tasks([task.task_id])

    with pytest.raises(TaskCancelled):
        await backend.start(attempt)
    assert (await backend.get_task(task.task_id)).status == TaskStatus.CANCELLING


async def test_renew_extends_the_lease(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await backend.acquire(AGENT, "", timedelta(seconds=5))
    assert attempt is not None

    renewed = await backend.renew(attempt, timedelta(minutes=10))

    assert renewed.lease_expires_at - attempt.lease_expires_at > timedelta(minutes=9)
    assert renewed.token == attempt.token
    assert (
        await backend.recover_expired(attempt.lease_expires_at + timedelta(seconds=1))
        == []
    )


async def test_renew_after_expiry_and_recovery_is_refused(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await take(backend)
    await backend.recover_expired(later())

    with pytest.raises(LeaseLost):
        await backend.renew(attempt, LEASE)


async def test_renew_of_a_cancelled_task_says_so(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))
    attempt = await take(backend)
    await backend.cancel_tasks([task.task_id])

    with pytest.raises(TaskCancelled):
        await backend.renew(attempt, LEASE)


async def test_a_payload_brought_with_the_attempt_is_whole(backend: Backend) -> None:
    # Several MiB in small chunks: more chunks than one read batch of a blob holds.
    chunk = bytes(range(256)) * 328
    payload = chunk * 40
    session = await backend.create_session(objects_pb2.TaskOptions(), [""])

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield chunk

    blob = await backend.write_blob(chunks())
    await backend.submit_tasks(
        session.session_id, [NewTask(payload=blob, expected_outputs=["out"])]
    )
    attempt = await backend.acquire(
        "agent", "", timedelta(seconds=30), payload_up_to=len(payload)
    )
    assert attempt is not None
    assert attempt.payload_data == payload


async def test_a_payload_larger_than_asked_for_stays_in_its_blob(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["small"]))
    await submit(backend, sid, await new_task(backend, ["large"]))
    size = len(b"payload")

    small = await backend.acquire(AGENT, "", LEASE, payload_up_to=size)
    large = await backend.acquire(AGENT, "", LEASE, payload_up_to=size - 1)

    assert small is not None and small.payload_data == b"payload"
    assert large is not None and large.payload_data is None


async def test_a_batch_takes_tasks_in_queue_order(backend: Backend) -> None:
    sid = await session(backend)
    low = objects_pb2.TaskOptions(priority=1)
    high = objects_pb2.TaskOptions(priority=7)
    olds = await submit(
        backend,
        sid,
        await new_task(backend, ["a"]),
        await new_task(backend, ["b"]),
        options=low,
    )
    [urgent] = await submit(backend, sid, await new_task(backend, ["c"]), options=high)
    [new] = await submit(backend, sid, await new_task(backend, ["d"]), options=low)

    first = await backend.acquire_many(AGENT, "", LEASE, 3)
    rest = await backend.acquire_many(AGENT, "", LEASE, 3)

    taken = [a.task.task_id for a in first + rest]
    assert taken == [urgent.task_id] + [t.task_id for t in olds] + [new.task_id]
    assert [len(first), len(rest)] == [3, 1]
    assert await backend.acquire_many(AGENT, "", LEASE, 3) == []


async def test_a_batch_is_dispatched_with_a_token_and_lease_each(
    backend: Backend,
) -> None:
    sid = await session(backend)
    tasks = await submit(
        backend, sid, *[await new_task(backend, [f"out-{n}"]) for n in range(4)]
    )
    before = datetime.now(timezone.utc)

    attempts = await backend.acquire_many("agent-7", "", timedelta(seconds=60), 4)

    assert {a.task.task_id for a in attempts} == {t.task_id for t in tasks}
    assert len({a.token for a in attempts}) == 4
    for attempt in attempts:
        assert attempt.agent_id == "agent-7"
        assert attempt.task.status == TaskStatus.DISPATCHED
        assert attempt.lease_expires_at - before >= timedelta(seconds=59)
        record = await backend.get_task(attempt.task.task_id)
        assert record.status == TaskStatus.DISPATCHED
        assert record.owner_agent_id == "agent-7"
    # Each attempt ends on its own: another's token does not stand for it.
    first, second, *_ = attempts
    await backend.complete(first, _values(first))
    with pytest.raises(LeaseLost):
        await backend.renew(first, LEASE)
    await backend.renew(second, LEASE)
    assert (await backend.get_task(second.task.task_id)).status == (
        TaskStatus.DISPATCHED
    )


async def test_a_batch_brings_the_payloads_asked_for(backend: Backend) -> None:
    sid = await session(backend)
    small = NewTask(await blob(backend, b"tiny"), ["small"])
    large = NewTask(await blob(backend, b"x" * 100), ["large"])
    await submit(backend, sid, small, large)

    attempts = await backend.acquire_many(AGENT, "", LEASE, 2, payload_up_to=10)

    payloads = {a.task.expected_outputs[0]: a.payload_data for a in attempts}
    assert payloads == {"small": b"tiny", "large": None}


async def test_a_batch_brings_payloads_that_add_up_to_several_mib(
    backend: Backend,
) -> None:
    sid = await session(backend)
    payloads = [bytes([n]) * (600 * 1024) for n in range(3)]
    tasks = [
        NewTask(await blob(backend, data), [f"out-{n}"])
        for n, data in enumerate(payloads)
    ]
    await submit(backend, sid, *tasks)

    attempts = await backend.acquire_many(
        AGENT, "", LEASE, 3, payload_up_to=1024 * 1024
    )

    assert [a.payload_data for a in attempts] == payloads


async def test_a_batch_takes_only_its_partition(backend: Backend) -> None:
    sid = await session(backend, partitions=["cpu", "gpu"])
    cpu = objects_pb2.TaskOptions(partition_id="cpu")
    gpu = objects_pb2.TaskOptions(partition_id="gpu")
    [on_cpu] = await submit(backend, sid, await new_task(backend, ["c"]), options=cpu)
    await submit(backend, sid, await new_task(backend, ["g"]), options=gpu)

    attempts = await backend.acquire_many(AGENT, "cpu", LEASE, 5)

    assert [a.task.task_id for a in attempts] == [on_cpu.task_id]


@pytest.mark.parametrize("limit", [0, -1])
async def test_a_batch_of_nothing_is_refused(backend: Backend, limit: int) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["x"]))

    with pytest.raises(ValueError, match="at least 1"):
        await backend.acquire_many(AGENT, "", LEASE, limit)

    assert (await backend.get_task(task.task_id)).status == TaskStatus.SUBMITTED


def _values(attempt: Attempt) -> dict[str, bytes]:
    return {key: key.encode() for key in attempt.task.expected_outputs}
