"""Busy polling: the agent's loop stays awake for a window after each hand-off with
its worker, and sleeps again once the window is over."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent._busy_poll import BusyPoll
from agent._config import AgentConfig
from agent._loop import TaskLoop
from agent._registry import AttemptRegistry
from agent._service import AgentService
from agent._worker import Dispatch, TaskData
from agent.backend import Attempt, NewTask, SqliteBackend, TaskStatus
from gridpod_api import (
    agent_service_pb2_grpc,
    objects_pb2,
    worker_common_pb2,
)
from worker_sdk import Address
from worker_sdk._agent import CHANNEL_OPTIONS, result_messages
from worker_sdk._listen import listen, new_server

WINDOW = timedelta(milliseconds=50)


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _cpu_share(seconds: float) -> float:
    """The CPU time this process used over ``seconds``, as a share of them: near 1
    while its loop polls, near 0 while it sleeps."""
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


async def test_a_touch_keeps_the_loop_polling_until_its_window_is_over() -> None:
    poll = BusyPoll(WINDOW)
    runner = asyncio.create_task(poll.run())
    try:
        await _turns(3)
        assert not poll.spinning  # never touched: parked
        idle = await _cpu_share(WINDOW.total_seconds() / 2)
        poll.touch()
        await _turns(3)
        assert poll.spinning
        # Polling keeps the process on the CPU, where a parked loop sleeps. Under
        # load the share falls, but stays well above an idle loop's.
        assert await _cpu_share(WINDOW.total_seconds() / 2) > 5 * idle + 0.02
        await asyncio.sleep(WINDOW.total_seconds() * 4)
        assert not poll.spinning
        poll.touch()  # a touch wakes it again
        await _turns(3)
        assert poll.spinning
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert not poll.spinning


async def test_touches_within_the_window_extend_it() -> None:
    window = timedelta(milliseconds=300)
    poll = BusyPoll(window)
    runner = asyncio.create_task(poll.run())
    try:
        # A touch every tenth of the window, for three windows: a sleep would
        # have to overrun by most of a window for the polling to stop between.
        step = window.total_seconds() / 10
        seen = []
        for _ in range(30):
            poll.touch()
            await asyncio.sleep(step)
            seen.append(poll.spinning)
        assert all(seen)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_zero_window_never_polls() -> None:
    # run() returns at once instead of waiting for touches.
    await asyncio.wait_for(BusyPoll(timedelta(0)).run(), 1)


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="busy_poll"):
        AgentConfig(backend_url="sqlite://x", busy_poll=timedelta(microseconds=-1))


class _SlowWorker:
    """Takes ``seconds`` per task, and notes whether the loop polled meanwhile."""

    def __init__(self, registry: AttemptRegistry, loop: list[TaskLoop]) -> None:
        self.registry = registry
        self.loop = loop
        self.seen_spinning: list[bool] = []

    async def wait_healthy(self, initial: timedelta, ceiling: timedelta) -> None:
        return None

    async def read_ahead(self, attempt: Attempt) -> TaskData:
        return TaskData(payload=[b"p"])

    async def process(
        self,
        attempt: Attempt,
        data: TaskData | None,
        timeout: float | None,
        dispatch: Dispatch | None = None,
    ) -> worker_common_pb2.ProcessReply:
        await _turns(3)
        self.seen_spinning.append(self.loop[0].busy_poll.spinning)
        # Computing for longer than the window: the loop sleeps meanwhile.
        await asyncio.sleep(WINDOW.total_seconds() * 4)
        self.seen_spinning.append(self.loop[0].busy_poll.spinning)
        running = self.registry.get(attempt.token)
        assert running is not None
        for key in attempt.task.expected_outputs:
            running.results[key] = b"r"
        output = objects_pb2.Output()
        output.ok.SetInParent()
        return worker_common_pb2.ProcessReply(output=output)


async def test_the_agent_polls_at_hand_offs_only(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "state.db")
    try:
        session = await backend.create_session(objects_pb2.TaskOptions(), ())

        async def payload() -> Any:
            yield b"p"

        blob = await backend.write_blob(payload())
        [record] = await backend.submit_tasks(
            session.session_id, [NewTask(blob, ["out"])]
        )
        config = AgentConfig(
            backend_url="sqlite://unused",
            idle_poll=timedelta(milliseconds=20),
            busy_poll=WINDOW,
        )
        registry = AttemptRegistry()
        holder: list[TaskLoop] = []
        worker = _SlowWorker(registry, holder)
        loop = TaskLoop(config, backend, worker, registry)  # type: ignore[arg-type]
        holder.append(loop)
        runner = asyncio.create_task(loop.run())
        try:
            while (await backend.get_task(record.task_id)).status != (  # type: ignore[union-attr]
                TaskStatus.COMPLETED
            ):
                await asyncio.sleep(0.01)
            # Polling right after the task was handed over, asleep while it
            # computed past the window.
            assert worker.seen_spinning == [True, False]
            await asyncio.sleep(WINDOW.total_seconds() * 4)
            # An idle agent does not poll: its loop runs little.
            assert not loop.busy_poll.spinning
            assert await _cpu_share(0.3) < 0.2
        finally:
            loop.drain()
            await asyncio.wait_for(runner, 10)
    finally:
        await backend.close()


class _CountedPoll(BusyPoll):
    def __init__(self) -> None:
        super().__init__(WINDOW)
        self.touches = 0

    def touch(self) -> None:
        self.touches += 1
        super().touch()


async def _stream(messages: Any) -> Any:
    for message in messages:
        yield message


async def test_a_result_sent_is_a_hand_off_and_settles_the_task(
    tmp_path: Path,
) -> None:
    backend = SqliteBackend(tmp_path / "state.db")
    poll = _CountedPoll()
    registry = AttemptRegistry()
    server = new_server(CHANNEL_OPTIONS)
    service = AgentService(backend, registry, 1024, busy_poll=poll)
    agent_service_pb2_grpc.add_AgentServicer_to_server(service, server)
    address = Address("unix", str(tmp_path / "agent.sock"))
    await listen(server, address)
    channel = grpc.aio.insecure_channel(address.grpc_target)
    try:
        session = await backend.create_session(objects_pb2.TaskOptions(), ())

        async def payload() -> Any:
            yield b"p"

        blob = await backend.write_blob(payload())
        await backend.submit_tasks(session.session_id, [NewTask(blob, ["out"])])
        attempt = await backend.acquire("agent", "", timedelta(seconds=60))
        assert attempt is not None
        running = registry.add(attempt)
        answers: list[str] = []
        running.on_answer = lambda: answers.append("answered")
        stub = agent_service_pb2_grpc.AgentStub(channel)

        refused = await stub.SendResult(
            _stream(result_messages(attempt.token, "not-its-own", b"v", 64))
        )
        assert refused.WhichOneof("type") == "Error"
        assert answers == []  # only an accepted result settles the task
        assert poll.touches == 2  # as the call arrived and as it ended

        accepted = await stub.SendResult(
            _stream(result_messages(attempt.token, "out", b"v", 64))
        )
        assert accepted.WhichOneof("type") == "Ok"
        assert answers == ["answered"]
        assert poll.touches == 4
    finally:
        await channel.close()
        await server.stop(0)
        await backend.close()
