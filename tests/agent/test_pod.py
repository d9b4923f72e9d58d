"""The agent with a real worker: the task life cycle from submission to results."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from agent.backend import ResultStatus, TaskStatus
from tests.agent.conftest import Grid, Pod, options


async def test_a_simple_task_completes(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    task = await grid.submit(session, b"hello", ["out"], options("echo"))
    assert await grid.value(session, "out") == b"hello"
    record = await grid.backend.get_task(task.task_id)
    assert record.status == TaskStatus.COMPLETED
    assert record.owner_agent_id == "pod0"
    assert record.started_at is not None and record.ended_at is not None


async def test_a_dag_runs_in_dependency_order(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    await grid.submit_many(
        session,
        [
            (b"a", ["a"], []),
            (b"b", ["b"], []),
            (b"c:", ["c"], ["a", "b"]),
            (b"d:", ["d"], ["c", "a"]),
        ],
        options("concat"),
    )
    assert await grid.value(session, "c") == b"c:ab"
    assert await grid.value(session, "d") == b"d:c:aba"


async def test_a_subtask_takes_over_its_parents_output(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    parent = await grid.submit(session, b"xy", ["out"], options("delegate"))
    assert await grid.value(session, "out") == b"xyxy"
    result = await grid.backend.get_result(session, "out")
    assert result.owner_task_id != parent.task_id
    child = await grid.backend.get_task(result.owner_task_id)
    assert child.parent_task_ids[-1:] == (parent.task_id,)
    assert (await grid.backend.get_task(parent.task_id)).status == TaskStatus.COMPLETED


async def test_recursive_divide_and_conquer_three_levels_deep(grid: Grid) -> None:
    grid.pod("--concurrency", "2")
    session = await grid.session()
    await grid.submit(session, b"0,8", ["sum"], options("divide"))
    assert await grid.value(session, "sum", timeout=60) == str(sum(range(8))).encode()
    # [0,8) splits into 2 halves, each into 2 quarters: 3 levels of tasks.
    assert (await grid.value(session, "sum/left/left")) == b"1"
    assert (await grid.value(session, "sum/right/right")) == b"13"


async def test_a_kernel_error_then_success_on_retry(grid: Grid, tmp_path: Path) -> None:
    grid.pod()
    session = await grid.session()
    marker = tmp_path / "marker"
    first = await grid.submit(
        session, str(marker).encode(), ["out"], options("fail-once", max_retries=2)
    )
    assert await grid.value(session, "out") == b"second attempt"
    failed = await grid.backend.get_task(first.task_id)
    assert failed.status == TaskStatus.ERROR
    assert "RuntimeError: first attempt fails" in failed.status_message
    retry = await grid.backend.get_task(
        (await grid.backend.get_result(session, "out")).owner_task_id
    )
    assert retry.retry_of_ids == (first.task_id,)
    assert retry.status == TaskStatus.COMPLETED


async def test_retries_exhausted_abort_outputs_and_dependents(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    [doomed, dependent] = await grid.submit_many(
        session,
        [(b"", ["doomed"], []), (b"", ["after"], ["doomed"])],
        options("always-fail", max_retries=2),
    )
    assert (await grid.result(session, "doomed")).status == ResultStatus.ABORTED
    assert (await grid.result(session, "after")).status == ResultStatus.ABORTED
    last = await grid.task_when(dependent.task_id, lambda t: t.status.is_final)
    assert last.status == TaskStatus.ERROR
    assert "doomed" in last.status_message
    # Three attempts, each with its own error message kept.
    owner = (await grid.backend.get_result(session, "doomed")).owner_task_id
    final = await grid.backend.get_task(owner)
    assert final.retry_of_ids[0] == doomed.task_id
    assert len(final.retry_of_ids) == 2
    attempts = []
    for task_id in final.retry_of_ids:
        attempts.append(await grid.backend.get_task(task_id))
    assert all(a.status == TaskStatus.ERROR for a in [*attempts, final])
    assert all("ValueError: attempt on" in a.status_message for a in [*attempts, final])


async def test_a_worker_killed_mid_task_is_retried(grid: Grid, tmp_path: Path) -> None:
    pod = grid.pod()
    session = await grid.session()
    marker = tmp_path / "blocked"
    first = await grid.submit(
        session, str(marker).encode(), ["out"], options("block-once", max_retries=1)
    )
    await _wait_for(marker.exists)
    pod.kill("worker")
    pod.start_worker()
    assert await grid.value(session, "out") == b"survived"
    failed = await grid.backend.get_task(first.task_id)
    assert failed.status == TaskStatus.ERROR
    assert "the worker failed" in failed.status_message


async def test_an_agent_killed_mid_task_is_recovered_by_another(
    grid: Grid, tmp_path: Path
) -> None:
    first_pod = grid.pod()
    session = await grid.session()
    marker = tmp_path / "blocked"
    task = await grid.submit(
        session, str(marker).encode(), ["out"], options("block-once", max_retries=1)
    )
    await _wait_for(marker.exists)
    first_pod.kill("agent")
    grid.pod()
    assert await grid.value(session, "out") == b"survived"
    lost = await grid.backend.get_task(task.task_id)
    assert "lease expired" in lost.status_message
    owner = (await grid.backend.get_result(session, "out")).owner_task_id
    assert (await grid.backend.get_task(owner)).owner_agent_id == "pod1"


async def test_a_task_over_its_max_duration_times_out(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    task = await grid.submit(
        session,
        b"30",
        ["out"],
        options("sleep", max_duration=timedelta(milliseconds=500)),
    )
    assert (await grid.result(session, "out")).status == ResultStatus.ABORTED
    record = await grid.backend.get_task(task.task_id)
    assert record.status == TaskStatus.TIMEOUT
    assert "max_duration" in record.status_message


async def test_cancelling_a_running_task_stops_it(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    task = await grid.submit(session, b"30", ["slow"], options("sleep"))
    await grid.task_when(task.task_id, lambda t: t.status == TaskStatus.PROCESSING)
    started = time.monotonic()
    await grid.backend.cancel_tasks([task.task_id])
    record = await grid.task_when(
        task.task_id, lambda t: t.status == TaskStatus.CANCELLED, timeout=10
    )
    assert record.status == TaskStatus.CANCELLED
    # The worker was freed: the next task does not wait for the 30 s kernel.
    await grid.submit(session, b"next", ["next"], options("echo"))
    assert await grid.value(session, "next", timeout=10) == b"next"
    assert time.monotonic() - started < 20
    assert (
        await grid.backend.get_result(session, "slow")
    ).status == ResultStatus.ABORTED


async def test_a_result_the_task_does_not_own_is_refused(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    await grid.submit(session, b"precious", ["precious"], options("echo"))
    assert await grid.value(session, "precious") == b"precious"
    thief = await grid.submit(session, b"precious", ["loot"], options("steal"))
    record = await grid.task_when(thief.task_id, lambda t: t.status.is_final)
    assert record.status == TaskStatus.ERROR
    assert "does not own result 'precious'" in record.status_message
    assert await grid.value(session, "precious") == b"precious"


async def test_broken_streams_are_refused_and_store_nothing(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    await grid.submit(session, b"", ["codes", "partial"], options("violate"))
    assert await grid.value(session, "codes") == b"|".join([b"INVALID_ARGUMENT"] * 3)
    assert await grid.value(session, "partial") == b"clean"


async def test_a_missing_resource_is_an_error_naming_the_key(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    task = await grid.submit(session, b"nowhere", ["out"], options("resource"))
    record = await grid.task_when(task.task_id, lambda t: t.status.is_final)
    assert record.status == TaskStatus.ERROR
    assert "DataUnavailable: the agent has no resource data 'nowhere'" in (
        record.status_message
    )


async def test_a_64_mib_payload_streams_through(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    payload = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    await grid.submit(session, payload, ["size"], options("size"))
    assert await grid.value(session, "size", timeout=60) == str(len(payload)).encode()


async def test_sigterm_lets_the_running_task_finish(grid: Grid) -> None:
    pod = grid.pod()
    session = await grid.session()
    task = await grid.submit(session, b"1.5", ["out"], options("sleep"))
    await grid.task_when(task.task_id, lambda t: t.status == TaskStatus.PROCESSING)
    assert pod.agent is not None
    pod.agent.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(pod.agent.wait, 30) == 0
    record = await grid.backend.get_task(task.task_id)
    assert record.status == TaskStatus.COMPLETED
    assert await grid.value(session, "out") == b"slept"


async def test_sigterm_past_the_grace_period_releases_without_a_retry(
    grid: Grid,
) -> None:
    pod = grid.pod("--grace-period", "0.5")
    session = await grid.session()
    task = await grid.submit(session, b"3", ["out"], options("sleep"))
    await grid.task_when(task.task_id, lambda t: t.status == TaskStatus.PROCESSING)
    assert pod.agent is not None
    pod.agent.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(pod.agent.wait, 30) == 0
    released = await grid.backend.get_task(task.task_id)
    assert released.status == TaskStatus.SUBMITTED
    assert released.retry_of_ids == ()
    grid.pod()
    assert await grid.value(session, "out") == b"slept"
    assert (await grid.backend.get_task(task.task_id)).status == TaskStatus.COMPLETED


async def test_the_agent_waits_for_its_worker(grid: Grid) -> None:
    pod = grid.pod(start=False)
    pod.start_agent()
    await _wait_for(lambda: _answers(pod, "/livez"))
    assert pod.http("/readyz")[0] == 503
    session = await grid.session()
    await grid.submit(session, b"late", ["out"], options("echo"))
    await asyncio.sleep(0.5)
    assert (
        await grid.backend.get_result(session, "out")
    ).status == ResultStatus.CREATED
    pod.start_worker()
    assert await grid.value(session, "out") == b"late"
    assert pod.http("/readyz")[0] == 200
    status, metrics = pod.http("/metrics")
    assert status == 200
    assert 'gridpod_agent_task_transitions_total{status="COMPLETED"} 1.0' in metrics
    assert "gridpod_agent_worker_up 1.0" in metrics


def _answers(pod: Pod, path: str) -> bool:
    try:
        return pod.http(path)[0] == 200
    except OSError:
        return False


async def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met after {timeout}s")


async def test_concurrency_runs_tasks_side_by_side_on_one_worker(grid: Grid) -> None:
    grid.pod("--concurrency", "4")
    session = await grid.session()
    tasks = await grid.submit_many(
        session, [(b"1", [f"out{n}"], []) for n in range(4)], options("sleep")
    )
    for n in range(4):
        assert await grid.value(session, f"out{n}") == b"slept"
    records = [await grid.backend.get_task(t.task_id) for t in tasks]
    first_end = min(r.ended_at for r in records if r.ended_at is not None)
    # Every task started before any ended: the four ran at the same time.
    assert all(r.started_at is not None and r.started_at < first_end for r in records)


async def test_an_output_already_sent_cannot_be_delegated(grid: Grid) -> None:
    grid.pod()
    session = await grid.session()
    await grid.submit(session, b"", ["out", "why"], options("send-then-delegate"))
    assert await grid.value(session, "out") == b"mine"
    why = await grid.value(session, "why")
    assert b"already sent it" in why, why
