"""The task loop: acquire and read ahead (a slot's worth of tasks per batch), run
on the worker, commit or fail; leases are renewed while the agent holds a task."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

import grpc

from agent import _metrics
from agent._busy_poll import BusyPoll
from agent._config import AgentConfig
from agent._registry import AttemptRegistry
from agent._worker import Dispatch, TaskData, WorkerLink
from agent.backend import (
    Attempt,
    Backend,
    BackendError,
    LeaseLost,
    MissingOutputs,
    NotOwned,
    Subscription,
    TaskCancelled,
    TaskStatus,
    Topic,
)
from gridpod_api import worker_common_pb2
from worker_sdk._logging import log_line
from worker_sdk._server import DRAINING_DETAILS

__all__ = ["TaskLoop"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

StopReason = Literal["cancelled", "lease-lost", "draining"]

# Codes after which the worker is checked again before it gets another task.
_WORKER_DOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


# How often an agent that gets no wake-ups from its backend polls an empty queue.
_FALLBACK_POLL = 0.02

# A task still running this long after its first request has its start recorded
# then; one that ends sooner has it recorded by the transaction that ends it.
_START_DELAY = 0.1


class _Polling(Subscription):
    """Stands in for wake-ups the backend cannot give: every wait times out soon."""

    async def wait(self, timeout: float | None = None) -> bool:
        await asyncio.sleep(min(timeout or _FALLBACK_POLL, _FALLBACK_POLL))
        return False

    def close(self) -> None:
        pass


class _Start:
    """The recording of an attempt's start, which most short tasks never need on
    its own: ``take`` hands it to the transaction that ends the attempt.

    A timer, not a task per attempt: the start is recorded by a task of its own
    only for an attempt that runs past ``_START_DELAY``.
    """

    def __init__(self, backend: Backend, attempt: Attempt, begun: asyncio.Future[bool]):
        self._backend = backend
        self._attempt = attempt
        self._timer: asyncio.TimerHandle | None = None
        self.at: datetime | None = None
        self.task: asyncio.Task[None] | None = None
        self._taken = False
        begun.add_done_callback(self._begun)

    def _begun(self, begun: asyncio.Future[bool]) -> None:
        # A call that ended before its first request leaves the attempt to the
        # code that handles its end; so does one whose start was taken already.
        if begun.cancelled() or not begun.result() or self._taken:
            return
        self.at = datetime.now(timezone.utc)
        self._timer = asyncio.get_running_loop().call_later(_START_DELAY, self._send)

    def _send(self) -> None:
        self._timer = None
        self.task = asyncio.ensure_future(self._backend.start(self._attempt, self.at))
        # Its outcome is read only while the attempt runs; later, nobody asks.
        self.task.add_done_callback(_retrieved)

    def take(self) -> datetime | None:
        """When the attempt started, for the next transition to record; None if
        the start was recorded (or is being recorded) already."""
        if self.task is not None:
            return None
        self._taken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.at


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class _Held:
    """A task this agent holds, queued for a slot or running."""

    attempt: Attempt
    data: TaskData | None
    acquired: float
    runner: asyncio.Task[worker_common_pb2.ProcessReply] | None = None
    start: _Start | None = None
    # When the attempt started, if the transition that ends it must record it.
    started_at: datetime | None = None
    stop_reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        self.stop_reason = self.stop_reason or reason
        if self.runner is not None:
            self.runner.cancel()


def _extra(attempt: Attempt, **more: object) -> dict[str, object]:
    task = attempt.task
    return {
        "session_id": task.session_id,
        "task_id": task.task_id,
        "attempt": task.attempt,
        **more,
    }


class TaskLoop:
    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        worker: WorkerLink,
        registry: AttemptRegistry,
    ) -> None:
        self._config = config
        self._backend = backend
        self._worker = worker
        self._registry = registry
        self._ready: asyncio.Queue[_Held] = asyncio.Queue(maxsize=config.concurrency)
        # Wakes the reader waiting for room in ``_ready``.
        self._taken = asyncio.Event()
        # The reader waits for room for a whole batch: a backend that takes several
        # tasks in one transition spends less on each.
        self._batch = min(config.concurrency, backend.acquire_batch)
        self._held: dict[str, _Held] = {}
        self._running: set[_Held] = set()
        # Resolved once the latest Process call has settled (see Dispatch).
        self._last_settled: asyncio.Future[bool] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = asyncio.Event()
        self._worker_ok = asyncio.Event()
        self._health_check: asyncio.Task[None] | None = None
        self.ready = False
        # Touched at each hand-off of a task with the worker; the Agent service
        # touches it too.
        self.busy_poll = BusyPoll(config.busy_poll)

    # -- running and stopping -----------------------------------------------------

    async def run(self) -> None:
        """Serve tasks until ``drain`` is called and the running ones are done."""
        if not await self._until_draining(self._check_worker()):
            return  # drained before the worker ever answered
        helpers = [
            asyncio.create_task(self._read_ahead(), name="read-ahead"),
            asyncio.create_task(self._keep_leases(), name="lease-keeper"),
            asyncio.create_task(self._recover(), name="lease-recovery"),
            asyncio.create_task(self.busy_poll.run(), name="busy-poll"),
        ]
        slots = [
            asyncio.create_task(self._slot(), name=f"slot-{n}")
            for n in range(self._config.concurrency)
        ]
        try:
            await self._draining.wait()
            await self._release_queued()
            await self._wait_for_running()
        finally:
            if self._health_check is not None:
                helpers.append(self._health_check)
            for task in helpers + slots:
                task.cancel()
            await asyncio.gather(*helpers, *slots, return_exceptions=True)
            await self._release_queued()
            # A task a slot took but never started (the worker was down) is held
            # still: release it, so that it costs no retry.
            for held in list(self._held.values()):
                await self._release(held)

    async def _until_draining(self, work: Coroutine[Any, Any, object]) -> bool:
        """Run ``work`` unless draining starts first; True if it finished."""
        job = asyncio.ensure_future(work)
        drained = asyncio.ensure_future(self._draining.wait())
        await asyncio.wait({job, drained}, return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        if job.done():
            job.result()
            return True
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return False

    def drain(self) -> None:
        if not self._draining.is_set():
            logger.info("draining: %d task(s) held", len(self._held))
        self.ready = False
        self._draining.set()

    async def _wait_for_running(self) -> None:
        grace = self._config.grace_period.total_seconds()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            logger.warning(
                "grace period of %.1fs over: releasing %d running task(s)",
                grace,
                len(self._running),
            )
            for held in list(self._running):
                held.stop("draining")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 10)

    async def _release_queued(self) -> None:
        while not self._ready.empty():
            held = self._ready.get_nowait()
            await self._release(held)

    async def _release(self, held: _Held) -> None:
        self._held.pop(held.attempt.token, None)
        with contextlib.suppress(BackendError):
            await self._backend.release(held.attempt)
            self._log(held.attempt, "released", TaskStatus.SUBMITTED)

    # -- the worker's health ------------------------------------------------------

    async def _check_worker(self) -> None:
        self.ready = False
        self._worker_ok.clear()
        config = self._config
        await self._worker.wait_healthy(
            config.health_backoff_initial, config.health_backoff_max
        )
        self._worker_ok.set()
        self.ready = not self._draining.is_set()

    def _worker_failed(self) -> None:
        if self._worker_ok.is_set():
            self._worker_ok.clear()
            self.ready = False
            self._health_check = asyncio.create_task(
                self._check_worker(), name="worker-health"
            )

    # -- acquiring ahead ----------------------------------------------------------

    async def _read_ahead(self) -> None:
        # Subscribed before the first acquire, so that a task queued after an
        # empty answer wakes the wait that follows it.
        with self._queue_wakeups() as queued:
            while not self._draining.is_set():
                if not self._worker_ok.is_set() and not await self._until_draining(
                    self._worker_ok.wait()
                ):
                    return
                await self._room_for(self._batch)
                # Once the latest task settled (see Dispatch): a worker about to
                # send its result is not kept waiting by an acquire.
                await _passed(self._last_settled)
                if self._draining.is_set():
                    return  # what it took now would only be released
                attempts = await self._acquire(self._batch)
                if not attempts:
                    # An empty queue: wait for a wake-up, or poll again after the
                    # idle interval in case one was missed.
                    await self._until_draining(
                        queued.wait(self._config.idle_poll.total_seconds())
                    )
                    continue
                # All of the batch is held (renewed, released if the agent
                # drains) before any of it is read, which takes time.
                for held, payload in [self._hold(attempt) for attempt in attempts]:
                    held.data = await self._try_read(held.attempt, payload)
                    await self._ready.put(held)

    async def _room_for(self, count: int) -> None:
        """Wait until the slots took enough of the tasks read ahead to leave room
        for ``count`` more."""
        while self._ready.maxsize - self._ready.qsize() < count:
            self._taken.clear()
            await self._taken.wait()

    def _queue_wakeups(self) -> Subscription:
        try:
            return self._backend.subscribe(Topic.QUEUE)
        except BackendError:
            logger.warning(
                "no wake-ups from the backend: polling for tasks every %.0f ms",
                _FALLBACK_POLL * 1000,
                exc_info=True,
            )
            return _Polling()

    def _hold(self, attempt: Attempt) -> tuple[_Held, bytes | None]:
        """The task held from now on, and the payload that came with it."""
        payload = attempt.payload_data
        # The read-ahead copy is the only one kept; the attempt lives longer.
        attempt = dataclasses.replace(attempt, payload_data=None)
        held = _Held(attempt, None, time.monotonic())
        self._held[attempt.token] = held
        return held, payload

    async def _try_read(
        self, attempt: Attempt, payload: bytes | None
    ) -> TaskData | None:
        try:
            return await self._maybe_read(attempt, payload)
        except BackendError:
            # Not fatal: the data is streamed from the backend when the task runs.
            logger.exception(
                "reading ahead task %s failed",
                attempt.task.task_id,
                extra=_extra(attempt),
            )
            return None

    async def _acquire(self, limit: int) -> list[Attempt]:
        try:
            attempts = await self._backend.acquire_many(
                self._config.agent_id,
                self._config.partition_id,
                self._config.lease,
                limit,
                payload_up_to=self._config.prefetch_max_size,
            )
        except BackendError:
            logger.exception("acquiring a task failed")
            await asyncio.sleep(self._config.idle_poll.total_seconds())
            return []
        for attempt in attempts:
            self._note_acquired(attempt)
        return attempts

    def _note_acquired(self, attempt: Attempt) -> None:
        task = attempt.task
        if task.submitted_at is not None and task.acquired_at is not None:
            wait = (task.acquired_at - task.submitted_at).total_seconds()
            _metrics.QUEUE_WAIT_SECONDS.observe(max(wait, 0.0))
        self._log(attempt, "acquired", TaskStatus.DISPATCHED)

    async def _maybe_read(
        self, attempt: Attempt, payload: bytes | None
    ) -> TaskData | None:
        """Read small task data ahead; large data is streamed when the task runs."""
        task = attempt.task
        if payload is not None and not task.data_dependencies:
            return TaskData(payload=[payload])
        if task.payload.size > self._config.prefetch_max_size:
            return None
        total = task.payload.size
        for key in task.data_dependencies:
            result = await self._backend.get_result(task.session_id, key)
            total += result.size
        if total > self._config.prefetch_max_size:
            return None
        return await self._worker.read_ahead(attempt)

    # -- leases -------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        period = self._config.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(period)
            for held in list(self._held.values()):
                await self._renew(held)

    async def _renew(self, held: _Held) -> None:
        try:
            held.attempt = await self._backend.renew(held.attempt, self._config.lease)
        except TaskCancelled:
            held.stop("cancelled")
        except LeaseLost:
            held.stop("lease-lost")
        except BackendError:
            logger.exception(
                "renewing the lease of %s failed", held.attempt.task.task_id
            )

    async def _recover(self) -> None:
        period = self._config.lease.total_seconds() / 2
        while True:
            await asyncio.sleep(period)
            try:
                recovered = await self._backend.recover_expired()
            except BackendError:
                logger.exception("recovering expired leases failed")
                continue
            for task_id in recovered:
                logger.warning("task %s: lease expired, recovered", task_id)

    # -- running ------------------------------------------------------------------

    async def _slot(self) -> None:
        # The commit of one task overlaps the run of the next, and waits until the
        # worker has the next task's requests: the backend's calls run on the
        # event loop, where they would hold those requests back.
        committing: asyncio.Task[None] | None = None
        gate: asyncio.Future[bool] | None = None
        while True:
            if self._ready.empty():
                _open(gate)  # no next task to wait for
            held = await self._ready.get()
            self._taken.set()
            if not self._worker_ok.is_set():
                _open(gate)  # nor while the worker is down
                await self._until_draining(self._worker_ok.wait())
            if self._draining.is_set():
                _open(gate)
                await self._release(held)
                continue
            self._running.add(held)
            self._idle.clear()
            outcome = await self._guarded(held, self._run(held, gate))
            _open(gate)
            if outcome is None:
                self._done(held)
                continue
            if committing is not None:
                await committing
            gate = asyncio.get_running_loop().create_future()
            committing = asyncio.create_task(self._commit(held, gate, *outcome))

    async def _guarded(self, held: _Held, work: Coroutine[Any, Any, _T]) -> _T | None:
        try:
            return await work
        except Exception:
            # A slot must outlive any one task: give the task back and go on.
            logger.exception(
                "task %s: running it failed",
                held.attempt.task.task_id,
                extra=_extra(held.attempt),
            )
            await self._release(held)
            return None

    async def _commit(
        self,
        held: _Held,
        gate: asyncio.Future[bool],
        reply: worker_common_pb2.ProcessReply,
        results: dict[str, bytes],
    ) -> None:
        try:
            await gate
            await self._guarded(held, self._finish(held, reply, results))
        finally:
            self._done(held)

    def _done(self, held: _Held) -> None:
        self._held.pop(held.attempt.token, None)
        self._running.discard(held)
        if not self._running:
            self._idle.set()

    async def _run(
        self, held: _Held, gate: asyncio.Future[bool] | None
    ) -> tuple[worker_common_pb2.ProcessReply, dict[str, bytes]] | None:
        """Run the task on the worker; the reply to commit, or None if the attempt
        already ended."""
        if held.stop_reason is not None:
            await self._after_stop(held)
            return None
        dispatch = Dispatch.new()
        if gate is not None:
            dispatch.sent.add_done_callback(lambda _: _open(gate))
        self._last_settled = dispatch.settled
        try:
            reply, results = await self._call(held, dispatch)
        except asyncio.CancelledError:
            if held.stop_reason is None:
                raise
            await self._after_stop(held)
            return None
        except grpc.aio.AioRpcError as error:
            await self._worker_error(held, error)
            return None
        finally:
            dispatch.ended()
        held.started_at = _take_start(held)
        if await self._start_failed(held):
            return None
        return reply, results

    async def _call(
        self, held: _Held, dispatch: Dispatch
    ) -> tuple[worker_common_pb2.ProcessReply, dict[str, bytes]]:
        """The Process call and its staged results."""
        attempt = held.attempt
        # Taken once the worker has the task's first request, off the critical
        # path; recorded before the attempt ends, so PROCESSING always comes first.
        held.start = _Start(self._backend, attempt, dispatch.begun)
        self._log(attempt, "processing", TaskStatus.PROCESSING)
        max_duration = attempt.task.options.max_duration
        timeout = max_duration.ToTimedelta().total_seconds() or None
        running = self._registry.add(attempt)
        running.on_answer = dispatch.answered
        _metrics.RUNNING.inc()
        busy_poll = self.busy_poll
        busy_poll.touch()
        dispatch.sent.add_done_callback(lambda _: busy_poll.touch())
        held.runner = asyncio.create_task(
            self._worker.process(attempt, held.data, timeout, dispatch)
        )
        held.data = None  # streamed: drop the read-ahead copy with the call
        try:
            reply = await held.runner
        finally:
            busy_poll.touch()
            _metrics.RUNNING.dec()
            self._registry.remove(attempt)
        return reply, running.results

    async def _start_failed(self, held: _Held) -> bool:
        """Whether recording the start failed; if so, the attempt is over."""
        if held.start is None or held.start.task is None:
            return False  # not recorded on its own
        try:
            await held.start.task
        except TaskCancelled:
            held.stop_reason = "cancelled"
            await self._after_stop(held)
            return True
        except LeaseLost:
            held.stop_reason = "lease-lost"
            await self._after_stop(held)
            return True
        return False

    async def _after_stop(self, held: _Held) -> None:
        _take_start(held)  # the attempt ends without it
        attempt = held.attempt
        if held.stop_reason == "cancelled":
            with contextlib.suppress(BackendError):
                await self._backend.mark_cancelled(attempt)
                self._log(attempt, "cancelled", TaskStatus.CANCELLED, held)
        elif held.stop_reason == "draining":
            await self._release(held)
        else:
            logger.warning(
                "task %s: lease lost, attempt abandoned",
                attempt.task.task_id,
                extra=_extra(attempt),
            )

    async def _worker_error(self, held: _Held, error: grpc.aio.AioRpcError) -> None:
        held.started_at = _take_start(held)
        if _turned_away(error):
            # Nothing of the task ran: it goes back to the queue at no retry's cost.
            await self._release(held)
            self._worker_failed()
            return
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            timeout = held.attempt.task.options.max_duration.ToTimedelta()
            message = f"the task exceeded its max_duration of {timeout}"
            await self._fail(held, message, TaskStatus.TIMEOUT)
            return
        message = f"the worker failed: {error.code().name}: {error.details()}"
        await self._fail(held, message, TaskStatus.ERROR)
        if error.code() in _WORKER_DOWN:
            self._worker_failed()

    async def _finish(
        self,
        held: _Held,
        reply: worker_common_pb2.ProcessReply,
        results: dict[str, bytes],
    ) -> None:
        output = reply.output
        if output.WhichOneof("type") != "ok":
            details = output.error.details if output.HasField("error") else ""
            await self._fail(held, details or "the worker replied with no output")
            return
        attempt = held.attempt
        try:
            await self._backend.complete(attempt, results, started_at=held.started_at)
        except (MissingOutputs, NotOwned) as error:
            await self._fail(held, str(error))
            return
        except TaskCancelled:
            held.stop_reason = "cancelled"
            await self._after_stop(held)
            return
        except LeaseLost:
            logger.warning(
                "task %s: commit refused, the lease was lost",
                attempt.task.task_id,
                extra=_extra(attempt),
            )
            return
        self._log(attempt, "completed", TaskStatus.COMPLETED, held)

    async def _fail(
        self, held: _Held, message: str, status: TaskStatus = TaskStatus.ERROR
    ) -> None:
        attempt = held.attempt
        try:
            record = await self._backend.fail(
                attempt, message, status, started_at=held.started_at
            )
        except TaskCancelled:
            held.stop_reason = "cancelled"
            await self._after_stop(held)
            return
        except LeaseLost:
            logger.warning(
                "task %s: failure not recorded, the lease was lost",
                attempt.task.task_id,
            )
            return
        self._log(attempt, f"failed: {message}", status, held)
        if record.task_id != attempt.task.task_id:
            _metrics.RETRIES.inc()
            logger.info(
                "task %s retried as %s",
                attempt.task.task_id,
                record.task_id,
                extra=_extra(attempt, retry_task_id=record.task_id),
            )

    # -- reporting ----------------------------------------------------------------

    def _log(
        self,
        attempt: Attempt,
        what: str,
        status: TaskStatus,
        held: _Held | None = None,
    ) -> None:
        _metrics.transitions(status.name).inc()
        duration = time.monotonic() - held.acquired if held is not None else 0.0
        if held is not None and status.is_final:
            _metrics.TASK_SECONDS.observe(duration)
        task = attempt.task
        log_line(
            logger,
            logging.INFO,
            f"task {task.task_id} attempt {task.attempt} {what}",
            _extra(attempt, status=status.name, duration_ms=round(duration * 1000, 3)),
        )


def _take_start(held: _Held) -> datetime | None:
    return None if held.start is None else held.start.take()


def _open(gate: asyncio.Future[bool] | None) -> None:
    """Let a commit waiting at ``gate`` go."""
    if gate is not None and not gate.done():
        gate.set_result(True)


async def _passed(step: asyncio.Future[bool] | None) -> None:
    """Wait for a Process call to have reached ``step``, if it has not."""
    if step is not None and not step.done():
        # Awaited as is: only a stopping agent cancels this wait, and nothing
        # else waits for the step it then cancels.
        await step


def _turned_away(error: grpc.aio.AioRpcError) -> bool:
    """Whether a draining worker refused the task before running any of it."""
    return (
        error.code() == grpc.StatusCode.UNAVAILABLE
        and error.details() == DRAINING_DETAILS
    )
