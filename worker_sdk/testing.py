"""Run a kernel in-process, against an agent held in memory: no sockets, no cluster.

from worker_sdk.testing import run_kernel

def test_price():
    run = run_kernel(Pricing(), b"payload", data_dependencies={"curve": b"..."})
    assert run.ok, run.error
    assert run.result() == b"..."
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gridpod_api import worker_common_pb2
from worker_sdk._data import DEFAULT_CHUNK_SIZE, iter_chunks
from worker_sdk._errors import DataUnavailable, ResultRefused, TaskCreationRefused
from worker_sdk._handler import TaskHandler
from worker_sdk._model import CreatedTask, DataSource, TaskDefinition, TaskOptions
from worker_sdk._process import TaskInput
from worker_sdk._runner import Runner

__all__ = [
    "InMemoryAgent",
    "KernelRun",
    "SubmittedTask",
    "run_kernel",
    "run_kernel_async",
]

_InitRequest = worker_common_pb2.ProcessRequest.ComputeRequest.InitRequest


@dataclass(frozen=True)
class SubmittedTask:
    """A subtask a kernel created, as the agent received it."""

    task_id: str
    payload: bytes
    expected_outputs: tuple[str, ...]
    data_dependencies: tuple[str, ...]
    options: TaskOptions | None


@dataclass
class InMemoryAgent:
    """An agent that keeps results and subtasks in memory and serves given data.

    Like a real agent, it accepts a result only for a key the task still owns: one
    of its expected outputs not delegated to a subtask.
    """

    resources: dict[str, bytes] = field(default_factory=dict)
    common_data: dict[str, bytes] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    subtasks: list[SubmittedTask] = field(default_factory=list)
    refuse_task_creation: str | None = None
    _owned: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def begin(self, token: str, expected_outputs: Sequence[str]) -> None:
        self._owned[token] = set(expected_outputs)

    async def send_result(
        self, token: str, key: str, data: DataSource, chunk_size: int
    ) -> None:
        if key not in self._owned.get(token, set()):
            raise ResultRefused(key, "the task does not own this result")
        self.results[key] = b"".join(iter_chunks(data, chunk_size))

    async def create_tasks(
        self,
        token: str,
        definitions: Sequence[TaskDefinition],
        options: TaskOptions | None,
        chunk_size: int,
    ) -> list[CreatedTask]:
        if self.refuse_task_creation is not None:
            raise TaskCreationRefused([self.refuse_task_creation])
        created = []
        for definition in definitions:
            task = SubmittedTask(
                task_id=f"subtask-{next(self._ids)}",
                payload=b"".join(iter_chunks(definition.payload, chunk_size)),
                expected_outputs=tuple(definition.expected_outputs),
                data_dependencies=tuple(definition.data_dependencies),
                options=options,
            )
            self.subtasks.append(task)
            self._owned.get(token, set()).difference_update(task.expected_outputs)
            created.append(
                CreatedTask(task.task_id, task.expected_outputs, task.data_dependencies)
            )
        return created

    async def get_data(self, token: str, kind: str, key: str) -> memoryview:
        if kind == "direct":
            raise DataUnavailable(kind, key, "direct data is not supported")
        store = self.resources if kind == "resource" else self.common_data
        if key not in store:
            raise DataUnavailable(kind, key, "no such key")
        return memoryview(store[key])


@dataclass(frozen=True)
class KernelRun:
    """What one run of a kernel produced."""

    kernel: str | None
    error: str | None
    results: dict[str, bytes]
    subtasks: list[SubmittedTask]

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self, key: str | None = None) -> bytes:
        """The result sent for ``key``, or the only result when ``key`` is omitted."""
        if key is None:
            if len(self.results) != 1:
                raise KeyError(f"the run sent {len(self.results)} results: name one")
            return next(iter(self.results.values()))
        return self.results[key]


async def run_kernel_async(
    handler: TaskHandler,
    payload: bytes = b"",
    *,
    data_dependencies: Mapping[str, bytes] | None = None,
    expected_outputs: Sequence[str] = ("output",),
    options: TaskOptions | None = None,
    session_id: str = "session",
    task_id: str = "task",
    agent: InMemoryAgent | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> KernelRun:
    """Run the kernel that ``options`` selects, as the worker would; see run_kernel."""
    agent = agent if agent is not None else InMemoryAgent()
    token = f"token-{task_id}"
    agent.begin(token, expected_outputs)
    init = _InitRequest(
        session_id=session_id,
        task_id=task_id,
        expected_output_keys=list(expected_outputs),
        task_options=(options or TaskOptions()).to_proto(),
    )
    init.configuration.data_chunk_max_size = chunk_size
    task_input = TaskInput(
        token,
        init,
        memoryview(payload),
        {k: memoryview(v) for k, v in (data_dependencies or {}).items()},
    )
    with ThreadPoolExecutor(2, thread_name_prefix="kernel") as executor:
        runner = Runner(handler, agent, executor, chunk_size)
        outcome = await runner.run(task_input)
        await runner.leave_session()
    return KernelRun(
        outcome.kernel, outcome.error, dict(agent.results), list(agent.subtasks)
    )


def run_kernel(
    handler: TaskHandler,
    payload: bytes = b"",
    *,
    data_dependencies: Mapping[str, bytes] | None = None,
    expected_outputs: Sequence[str] = ("output",),
    options: TaskOptions | None = None,
    session_id: str = "session",
    task_id: str = "task",
    agent: InMemoryAgent | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> KernelRun:
    """Run one task through ``handler`` in-process and report what it produced.

    The task has the given payload, data dependencies, expected outputs and options;
    pass an ``InMemoryAgent`` to provide resources and common data, or to inspect
    what several runs sent.
    """
    return asyncio.run(
        run_kernel_async(
            handler,
            payload,
            data_dependencies=data_dependencies,
            expected_outputs=expected_outputs,
            options=options,
            session_id=session_id,
            task_id=task_id,
            agent=agent,
            chunk_size=chunk_size,
        )
    )
