"""Running one task: choose its kernel, call it, and turn what it did into an output."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from worker_sdk import _metrics
from worker_sdk._agent import AgentPort
from worker_sdk._errors import AgentError, KernelNotFound, OutputError
from worker_sdk._handler import TaskHandler, is_async
from worker_sdk._logging import log_line
from worker_sdk._model import Configuration
from worker_sdk._process import TaskInput
from worker_sdk._task import Task

logger = logging.getLogger(__name__)

_BYTES_LIKE = (bytes, bytearray, memoryview)


@dataclass(frozen=True)
class Outcome:
    """The output of a task: success, or the error details the agent records."""

    kernel: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe_exception(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Runner:
    """Runs tasks of one handler; shared by the worker server and the test helpers."""

    def __init__(
        self,
        handler: TaskHandler,
        agent: AgentPort,
        executor: Executor | None,
        default_chunk_size: int,
    ) -> None:
        self.handler = handler
        self.agent = agent
        self._executor = executor
        self._default_chunk_size = default_chunk_size
        self._session: str | None = None
        self._session_lock = asyncio.Lock()

    async def call_hook(self, hook: Callable[..., Any], *args: Any) -> None:
        if is_async(hook):
            await hook(*args)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, hook, *args)

    async def _enter_session(self, session_id: str) -> None:
        if session_id == self._session:
            return
        async with self._session_lock:
            if session_id == self._session:
                return
            await self.leave_session()
            await self.call_hook(self.handler.on_session_enter, session_id)
            self._session = session_id

    async def leave_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await self.call_hook(self.handler.on_session_leave, session)

    def make_task(self, task_input: TaskInput) -> Task:
        init = task_input.init
        chunk_size = init.configuration.data_chunk_max_size or self._default_chunk_size
        return Task(
            session_id=init.session_id,
            task_id=init.task_id,
            options=init.task_options,
            payload=task_input.payload,
            data_dependencies=task_input.data_dependencies,
            expected_outputs=list(init.expected_output_keys),
            configuration=Configuration(data_chunk_max_size=chunk_size),
            agent=self.agent,
            token=task_input.token,
            loop=asyncio.get_running_loop(),
        )

    async def run(self, task_input: TaskInput) -> Outcome:
        task = self.make_task(task_input)
        extra: dict[str, Any] = {"session_id": task.session_id, "task_id": task.task_id}
        started = time.perf_counter()
        try:
            kernel = task_input.init.task_options.options.get("kernel") or None
            name, function = self.handler.resolve_kernel(kernel)
        except KernelNotFound as error:
            logger.warning("task %s refused: %s", task.task_id, error, extra=extra)
            _metrics.for_kernel("").errors.inc()
            return Outcome(None, _describe_exception(error))
        extra["kernel"] = name
        await self._enter_session(task.session_id)
        outcome = await self._run_kernel(name, function, task, extra)
        elapsed = time.perf_counter() - started
        metrics = _metrics.for_kernel(name)
        metrics.seconds.observe(elapsed)
        (metrics.ok if outcome.ok else metrics.errors).inc()
        extra.update(
            duration_ms=round(elapsed * 1000, 3), outcome=outcome.error or "ok"
        )
        verdict = "ok" if outcome.ok else "failed"
        log_line(
            logger,
            logging.INFO,
            f"task {task.task_id} kernel {name} {verdict} in {elapsed * 1000:.1f} ms",
            extra,
        )
        return outcome

    async def _run_kernel(
        self, name: str, function: Callable[..., Any], task: Task, extra: dict[str, Any]
    ) -> Outcome:
        try:
            if is_async(function):
                returned = await function(task)
            else:
                loop = asyncio.get_running_loop()
                returned = await loop.run_in_executor(self._executor, function, task)
        except Exception as error:
            logger.exception(
                "task %s: kernel %s raised", task.task_id, name, extra=extra
            )
            return Outcome(name, _describe_exception(error))
        try:
            await self._deliver(task, returned)
        except (OutputError, AgentError) as error:
            # Not the kernel's code failing: a traceback would point nowhere useful.
            logger.error("task %s: %s", task.task_id, error, extra=extra)
            return Outcome(name, _describe_exception(error))
        except Exception as error:
            logger.exception(
                "task %s: sending its output failed", task.task_id, extra=extra
            )
            return Outcome(name, _describe_exception(error))
        return Outcome(name)

    async def _deliver(self, task: Task, returned: object) -> None:
        if isinstance(returned, _BYTES_LIKE):
            if len(task.expected_outputs) != 1:
                raise OutputError(
                    f"the kernel returned a value but the task has "
                    f"{len(task.expected_outputs)} expected outputs "
                    f"{task.expected_outputs}; send each with task.send_result"
                )
            await task._send_result(task.expected_outputs[0], returned)
        elif returned is not None:
            raise OutputError(
                f"the kernel returned {type(returned).__name__}; return bytes-like "
                "data for the only expected output, or None"
            )
        missing = [
            key
            for key in task.expected_outputs
            if key not in task.sent and key not in task.delegated
        ]
        if missing:
            raise OutputError(
                f"expected outputs neither sent nor delegated to a subtask: {missing}"
            )
