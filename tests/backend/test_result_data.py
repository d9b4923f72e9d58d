"""Results stored and staged in one step, results given to the commit, and
transitions that share one transaction."""

from __future__ import annotations

import asyncio

import pytest

from agent.backend import Backend, NotOwned, ResultStatus, TaskStatus
from tests.backend.support import (
    chunks,
    new_task,
    read,
    session,
    submit,
    take,
)


async def test_a_small_result_is_stored_and_staged_at_once(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    blob = await backend.stage_result_data(attempt, "out", chunks(b"ab", b"cd"))
    assert blob.size == 4
    await backend.complete(attempt)
    assert await read(backend.read_result(sid, "out")) == b"abcd"


async def test_a_large_result_streams_through(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    part = bytes(range(256)) * 4096  # 1 MiB a chunk: past what is held in memory
    blob = await backend.stage_result_data(attempt, "out", chunks(part, part, b"end"))
    assert blob.size == 2 * len(part) + 3
    await backend.complete(attempt)
    assert await read(backend.read_result(sid, "out")) == part + part + b"end"


@pytest.mark.parametrize("size", [3, 3 * 1024 * 1024])
async def test_a_key_not_owned_stores_nothing(backend: Backend, size: int) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["mine"]))
    await submit(backend, sid, await new_task(backend, ["theirs"]))
    attempt = await take(backend)
    with pytest.raises(NotOwned):
        await backend.stage_result_data(attempt, "theirs", chunks(b"x" * size))
    assert (await backend.get_result(sid, "theirs")).status == ResultStatus.CREATED


async def test_results_given_to_the_commit_are_committed_with_it(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["a", "b"]))
    attempt = await take(backend)
    await backend.stage_result_data(attempt, "a", chunks(b"staged"))
    await backend.complete(attempt, {"b": b"held"})
    assert await read(backend.read_result(sid, "a")) == b"staged"
    assert await read(backend.read_result(sid, "b")) == b"held"
    assert (await backend.get_task(task.task_id)).status == TaskStatus.COMPLETED


# Empty, tiny, about the most a backend keeps beside the result, just past it, and
# several chunks' worth.
@pytest.mark.parametrize("size", [0, 1, 1024, 1025, 3 * 1024 * 1024 + 5])
async def test_a_value_given_to_the_commit_reads_back_whole(
    backend: Backend, size: int
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    value = bytes(n % 251 for n in range(size))

    await backend.complete(attempt, {"out": value})

    assert await read(backend.read_result(sid, "out")) == value
    result = await backend.get_result(sid, "out")
    assert (result.status, result.size) == (ResultStatus.COMPLETED, size)


async def test_a_small_value_given_to_the_commit_wakes_its_dependent(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(
        backend,
        sid,
        await new_task(backend, ["first"]),
        await new_task(backend, ["second"], ["first"]),
    )
    first = await take(backend)
    await backend.complete(first, {"first": b"42"})

    second = await take(backend)

    assert list(second.task.data_dependencies) == ["first"]
    assert await read(backend.read_result(sid, "first")) == b"42"


async def test_a_result_given_to_the_commit_replaces_the_one_staged_for_its_key(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["a", "b"]))
    attempt = await take(backend)
    await backend.stage_result_data(attempt, "a", chunks(b"draft"))
    await backend.stage_result_data(attempt, "b", chunks(b"staged"))

    await backend.complete(attempt, {"a": b"final"})

    assert await read(backend.read_result(sid, "a")) == b"final"
    assert await read(backend.read_result(sid, "b")) == b"staged"


async def test_a_commit_with_a_result_not_owned_commits_nothing(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["a"]))
    await submit(backend, sid, await new_task(backend, ["other"]))
    attempt = await take(backend)
    with pytest.raises(NotOwned):
        await backend.complete(attempt, {"a": b"fine", "other": b"stolen"})
    assert (await backend.get_task(task.task_id)).status == TaskStatus.PROCESSING
    assert (await backend.get_result(sid, "a")).status == ResultStatus.CREATED
    assert (await backend.get_result(sid, "other")).status == ResultStatus.CREATED
    await backend.complete(attempt, {"a": b"fine"})
    assert await read(backend.read_result(sid, "a")) == b"fine"


async def test_transitions_grouped_in_one_transaction_fail_alone(
    backend: Backend,
) -> None:
    sid = await session(backend)
    count = 24
    await submit(
        backend, sid, *[await new_task(backend, [f"out{n}"]) for n in range(count)]
    )
    attempts = [await take(backend) for _ in range(count)]
    # Issued together, these queue up and run as groups; every other one sends a
    # key its task does not own.
    outcomes = await asyncio.gather(
        *(
            backend.stage_result_data(
                a, a.task.expected_outputs[0] if n % 2 else "out0x", chunks(b"v")
            )
            for n, a in enumerate(attempts)
        ),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == count // 2
    assert all(isinstance(o, NotOwned) for o in refused)
    committed = [a for n, a in enumerate(attempts) if n % 2]
    await asyncio.gather(*(backend.complete(a) for a in committed))
    done = [await backend.get_task(a.task.task_id) for a in committed]
    assert all(d.status == TaskStatus.COMPLETED for d in done)
    for n, attempt in enumerate(attempts):
        key = attempt.task.expected_outputs[0]
        status = (await backend.get_result(sid, key)).status
        assert status == (ResultStatus.COMPLETED if n % 2 else ResultStatus.CREATED)
