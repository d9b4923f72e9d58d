"""``Task``: what a kernel sees of the task it runs, and its calls to the agent."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from gridpod_api import objects_pb2
from worker_sdk._agent import AgentPort, DataKind
from worker_sdk._model import (
    Configuration,
    CreatedTask,
    DataSource,
    TaskDefinition,
    TaskOptions,
)

__all__ = ["Task"]

T = TypeVar("T")


class Task:
    """One task being processed.

    The agent calls (``send_result``, ``create_tasks`` and the ``get_*_data``) return
    an awaitable when called from the event loop, as in an ``async`` kernel, and block
    until done when called from another thread, as in a plain kernel.
    """

    def __init__(
        self,
        *,
        session_id: str,
        task_id: str,
        options: objects_pb2.TaskOptions,
        payload: memoryview,
        data_dependencies: Mapping[str, memoryview],
        expected_outputs: Sequence[str],
        configuration: Configuration,
        agent: AgentPort,
        token: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.session_id = session_id
        self.task_id = task_id
        self._options_message = options
        self.payload = payload
        self.data_dependencies: Mapping[str, memoryview] = MappingProxyType(
            dict(data_dependencies)
        )
        self.expected_outputs = list(expected_outputs)
        self.configuration = configuration
        self._agent = agent
        self._token = token
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.sent: set[str] = set()
        self.delegated: set[str] = set()

    @functools.cached_property
    def options(self) -> TaskOptions:
        """The task's options, the session's defaults merged in by the agent."""
        return TaskOptions.from_proto(self._options_message)

    def __repr__(self) -> str:
        return f"<Task {self.task_id} of session {self.session_id}>"

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        if threading.get_ident() == self._loop_thread:
            return coroutine
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def send_result(self, key: str, data: DataSource) -> Any:
        """Send the value of expected output ``key``: bytes, a file path or chunks."""
        return self._call(self._send_result(key, data))

    async def _send_result(self, key: str, data: DataSource) -> None:
        chunk_size = self.configuration.data_chunk_max_size
        await self._agent.send_result(self._token, key, data, chunk_size)
        self.sent.add(key)

    def create_tasks(
        self,
        definitions: Sequence[TaskDefinition],
        options: TaskOptions | None = None,
    ) -> Any:
        """Create subtasks; they are submitted only if this task succeeds.

        Returns the created tasks (a list of ``CreatedTask``). An expected output of
        this task listed by a subtask is delegated to that subtask.
        """
        return self._call(self._create_tasks(list(definitions), options))

    async def _create_tasks(
        self, definitions: list[TaskDefinition], options: TaskOptions | None
    ) -> list[CreatedTask]:
        if not definitions:
            return []
        chunk_size = self.configuration.data_chunk_max_size
        created = await self._agent.create_tasks(
            self._token, definitions, options, chunk_size
        )
        own = set(self.expected_outputs)
        for definition in definitions:
            self.delegated.update(own.intersection(definition.expected_outputs))
        return created

    def get_resource_data(self, key: str) -> Any:
        """Fetch an operator-provided resource blob (bytes-like)."""
        return self._call(self._agent.get_data(self._token, "resource", key))

    def get_common_data(self, key: str) -> Any:
        """Fetch a completed result of this task's session (bytes-like)."""
        return self._call(self._agent.get_data(self._token, "common", key))

    def get_direct_data(self, key: str) -> Any:
        """Fetch direct data; agents following the API may refuse it."""
        kind: DataKind = "direct"
        return self._call(self._agent.get_data(self._token, kind, key))
