"""Good clients: each submits batches of tasks through ``AsyncClient``, waits for
them, reads every result back and checks its value."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.load.handlers import derived
from tests.load.tally import Streams
from worker_sdk import TaskOptions
from worker_sdk.client import AsyncClient, AsyncSession, ResultStatus, TaskSpec
from worker_sdk.client import TaskStatus as ClientTaskStatus

DERIVE = TaskOptions(options={"kernel": "derive"})
# Above the control plane's chunk size (84,000 bytes): such a batch goes through a
# CreateLargeTasks stream instead of one CreateSmallTasks message.
_LARGE_PAYLOAD = 100_000


class GoodClientFailed(Exception):
    """A good client got something other than what it asked for."""


@dataclass(frozen=True, kw_only=True)
class GoodPlan:
    """What each good client does: ``batches`` batches of ``batch_size`` tasks."""

    clients: int
    batches: int
    batch_size: int

    @property
    def tasks(self) -> int:
        return self.clients * self.batches * self.batch_size


@dataclass(frozen=True)
class GoodTask:
    """One task a good client created, and what it carried."""

    session_id: str
    key: str
    task_id: str
    payload: bytes


@dataclass
class Ledger:
    """What the good clients created, kept as they go: a client that fails
    midway leaves its sessions and tasks here all the same."""

    sessions: set[str] = field(default_factory=set)
    tasks: list[GoodTask] = field(default_factory=list)


def shares_session(index: int) -> bool:
    """Every fifth client adds its tasks to the session of the one before it."""
    return index % 5 == 4


class SessionDesk:
    """Where a client leaves its session's id for the next one to share."""

    def __init__(self) -> None:
        self._sessions: dict[int, asyncio.Future[str]] = {}

    def _slot(self, index: int) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        return self._sessions.setdefault(index, loop.create_future())

    def publish(self, index: int, session_id: str) -> None:
        self._slot(index).set_result(session_id)

    def fail(self, index: int, error: BaseException) -> None:
        self._slot(index).set_exception(
            GoodClientFailed(f"client {index} has no session to share: {error!r}")
        )

    async def session_of(self, index: int) -> str:
        return await self._slot(index)


def payload_of(client: int, batch: int, task: int) -> bytes:
    """Each task's own payload; the first of each batch of every tenth client is
    padded past a chunk, so that its batch streams."""
    payload = f"client {client} batch {batch} task {task}".encode()
    if client % 10 == 3 and task == 0:
        return payload.ljust(_LARGE_PAYLOAD, b".")
    return payload


@dataclass(frozen=True)
class GoodRun:
    """What every good client of a run shares."""

    address: str
    plan: GoodPlan
    desk: SessionDesk
    streams: Streams
    ledger: Ledger


async def good_client(index: int, run: GoodRun) -> None:
    """Run one client's batches on a channel of its own."""
    async with AsyncClient(run.address) as client:
        session = await _session(client, index, run.desk)
        run.ledger.sessions.add(session.session_id)
        for batch in range(run.plan.batches):
            await _run_batch(session, index, batch, run)


async def _session(client: AsyncClient, index: int, desk: SessionDesk) -> AsyncSession:
    if shares_session(index):
        return await client.open_session(await desk.session_of(index - 1))
    shared = shares_session(index + 1)
    try:
        session = await client.create_session(DERIVE)
    except BaseException as error:
        if shared:
            desk.fail(index, error)
        raise
    if shared:
        desk.publish(index, session.session_id)
    return session


async def _run_batch(
    session: AsyncSession, index: int, batch: int, run: GoodRun
) -> None:
    streams = run.streams
    payloads = {
        f"c{index}-b{batch}-t{n}": payload_of(index, batch, n)
        for n in range(run.plan.batch_size)
    }
    specs = [TaskSpec(data, expected_outputs=[key]) for key, data in payloads.items()]
    if any(len(data) >= _LARGE_PAYLOAD for data in payloads.values()):
        with streams.held():
            submitted = await session.submit(specs)
    else:
        submitted = await session.submit(specs)
    tasks = [
        GoodTask(session.session_id, task.output, task.task_id, payloads[task.output])
        for task in submitted
    ]
    run.ledger.tasks += tasks
    if sorted(task.key for task in tasks) != sorted(payloads):
        raise GoodClientFailed(f"client {index}: created {submitted}")
    await _wait(session, index, tasks, streams)
    for task in tasks:
        await _check_value(session, index, task, streams)


async def _wait(
    session: AsyncSession, index: int, tasks: list[GoodTask], streams: Streams
) -> None:
    """Every fourth client watches its results, the others wait with
    WaitForCompletion: on Redis, each watch request reads every result of the
    grid (a watch names no session), which would make this run slow."""
    if index % 4:
        counts = await session.wait([task.task_id for task in tasks])
        if counts != {ClientTaskStatus.COMPLETED: len(tasks)}:
            raise GoodClientFailed(f"client {index}: tasks ended as {counts}")
        return
    with streams.held():
        statuses = await session.wait_for_results([task.key for task in tasks])
    failed = {k: s for k, s in statuses.items() if s != ResultStatus.COMPLETED}
    if failed or len(statuses) != len(tasks):
        raise GoodClientFailed(f"client {index}: results settled as {statuses}")


async def _check_value(
    session: AsyncSession, index: int, task: GoodTask, streams: Streams
) -> None:
    with streams.held():
        value = await session.result(task.key)
    expected = derived(task.payload)
    if value != expected:
        raise GoodClientFailed(
            f"client {index}: result {task.key} is {value[:100]!r}, "
            f"not {expected[:100]!r}"
        )
