"""Task handlers served by the workers under test.

Payloads that steer a kernel are JSON; kernels that probe an agent call return a
report line instead of raising, so that a test can read what the kernel saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from worker_sdk import (
    AgentError,
    Task,
    TaskDefinition,
    TaskHandler,
    TaskOptions,
    kernel,
)


def pattern(size: int) -> bytes:
    """``size`` reproducible bytes without period, so that misordered chunks show."""
    return random.Random(size).randbytes(size)


def concatenation(task: Task) -> bytes:
    """The payload followed by every data dependency, in key order."""
    parts = [bytes(task.payload)]
    parts += [bytes(task.data_dependencies[k]) for k in sorted(task.data_dependencies)]
    return b"".join(parts)


def description(task: Task) -> bytes:
    options = task.options
    duration = options.max_duration
    return json.dumps(
        {
            "session_id": task.session_id,
            "task_id": task.task_id,
            "expected_outputs": list(task.expected_outputs),
            "dependencies": sorted(task.data_dependencies),
            "options": dict(options.options or {}),
            "max_duration": None if duration is None else duration.total_seconds(),
            "max_retries": options.max_retries,
            "priority": options.priority,
            "partition_id": options.partition_id,
            "application_name": options.application_name,
            "engine_type": options.engine_type,
            "chunk_size": task.configuration.data_chunk_max_size,
        }
    ).encode()


def report(error: AgentError) -> bytes:
    return f"{type(error).__name__}: {error}".encode()


class Single(TaskHandler):
    """A handler with one kernel, which runs whatever the task names."""

    @kernel
    def echo(self, task: Task) -> bytes:
        return bytes(task.payload)


class Toolbox(TaskHandler):
    """Several kernels, plain and async, over payload, dependencies and outputs."""

    @kernel
    def concat(self, task: Task) -> bytes:
        return concatenation(task)

    @kernel("concat-async")
    async def concat_async(self, task: Task) -> bytes:
        return concatenation(task)

    @kernel
    def describe(self, task: Task) -> bytes:
        return description(task)

    @kernel("describe-async")
    async def describe_async(self, task: Task) -> bytes:
        return description(task)

    @kernel
    def big(self, task: Task) -> bytes:
        return pattern(int(bytes(task.payload)))

    @kernel
    def silent(self, task: Task) -> None:
        """Sends nothing: every expected output is missing."""

    @kernel("send-listed")
    def send_listed(self, task: Task) -> None:
        for key in json.loads(bytes(task.payload)):
            task.send_result(key, key.encode())

    @kernel("send-listed-async")
    async def send_listed_async(self, task: Task) -> None:
        for key in json.loads(bytes(task.payload)):
            await task.send_result(key, key.encode())


class Failing(TaskHandler):
    @kernel
    def boom(self, task: Task) -> bytes:
        raise ValueError("boom")

    @kernel("boom-async")
    async def boom_async(self, task: Task) -> bytes:
        await asyncio.sleep(0)
        raise ValueError("boom")

    @kernel("boom-after-send")
    def boom_after_send(self, task: Task) -> bytes:
        task.send_result(task.expected_outputs[0], b"partial")
        raise RuntimeError("failed after sending")


def _subtasks(task: Task) -> tuple[list[TaskDefinition], TaskOptions]:
    """Subtask definitions from the payload ``{"tasks": [...], "options": {...}}``."""
    spec = json.loads(bytes(task.payload))
    definitions = [
        TaskDefinition(
            payload=item.get("payload", "").encode() * item.get("repeat", 1),
            expected_outputs=item["outputs"],
            data_dependencies=item.get("dependencies", []),
        )
        for item in spec["tasks"]
    ]
    raw = spec.get("options", {})
    options = TaskOptions(
        options=raw.get("options"),
        max_duration=(
            timedelta(seconds=raw["max_duration"]) if "max_duration" in raw else None
        ),
        max_retries=raw.get("max_retries"),
        priority=raw.get("priority"),
        partition_id=raw.get("partition_id"),
    )
    return definitions, options


class Delegating(TaskHandler):
    """Creates the subtasks described by its payload and returns nothing."""

    @kernel
    def delegate(self, task: Task) -> None:
        definitions, options = _subtasks(task)
        task.create_tasks(definitions, options=options)

    @kernel("delegate-async")
    async def delegate_async(self, task: Task) -> None:
        definitions, options = _subtasks(task)
        await task.create_tasks(definitions, options=options)

    @kernel("tree-sum")
    async def tree_sum(self, task: Task) -> None:
        await task.create_tasks(
            [
                TaskDefinition(
                    payload=b"leaf", expected_outputs=[task.expected_outputs[0]]
                )
            ],
            options=TaskOptions(options={"kernel": "price"}),
        )

    @kernel("delegate-probe")
    async def delegate_probe(self, task: Task) -> bytes:
        definitions, options = _subtasks(task)
        try:
            await task.create_tasks(definitions, options=options)
        except AgentError as error:
            return report(error)
        return b"created"


def _chunks(sizes: list[int]) -> Iterator[bytes]:
    for index, size in enumerate(sizes):
        yield bytes([index % 256]) * size


class Streaming(TaskHandler):
    """Sends its result from a file path or from an iterable of chunks."""

    @kernel("from-file")
    def from_file(self, task: Task) -> None:
        task.send_result(task.expected_outputs[0], Path(bytes(task.payload).decode()))

    @kernel("from-file-async")
    async def from_file_async(self, task: Task) -> None:
        path = Path(bytes(task.payload).decode())
        await task.send_result(task.expected_outputs[0], path)

    @kernel("from-chunks")
    def from_chunks(self, task: Task) -> None:
        sizes = json.loads(bytes(task.payload))
        task.send_result(task.expected_outputs[0], _chunks(sizes))

    @kernel("from-chunks-async")
    async def from_chunks_async(self, task: Task) -> None:
        sizes = json.loads(bytes(task.payload))
        await task.send_result(task.expected_outputs[0], _chunks(sizes))

    @kernel("send-probe")
    async def send_probe(self, task: Task) -> bytes:
        """Sends to the key named by the payload; returns what the agent said."""
        try:
            await task.send_result(bytes(task.payload).decode(), b"x")
        except AgentError as error:
            return report(error)
        return b"sent"


def _read(task: Task, calls: list[list[str]]) -> list[Any]:
    getters = {
        "resource": task.get_resource_data,
        "common": task.get_common_data,
        "direct": task.get_direct_data,
    }
    return [getters[kind](key) for kind, key in calls]


class DataReader(TaskHandler):
    """Reads the agent data listed by its payload: ``[["common", key], ...]``."""

    @kernel
    def read(self, task: Task) -> bytes:
        return b"".join(bytes(data) for data in _read(task, _calls(task)))

    @kernel("read-async")
    async def read_async(self, task: Task) -> bytes:
        views = await asyncio.gather(*_read(task, _calls(task)))
        return b"".join(bytes(view) for view in views)

    @kernel("read-probe")
    def read_probe(self, task: Task) -> bytes:
        try:
            return b"".join(bytes(data) for data in _read(task, _calls(task)))
        except AgentError as error:
            return report(error)

    @kernel("read-probe-async")
    async def read_probe_async(self, task: Task) -> bytes:
        try:
            views = await asyncio.gather(*_read(task, _calls(task)))
        except AgentError as error:
            return report(error)
        return b"".join(bytes(view) for view in views)


def _calls(task: Task) -> list[list[str]]:
    calls: list[list[str]] = json.loads(bytes(task.payload))
    return calls


def _sleep_spec(task: Task) -> tuple[float, Path | None]:
    """``{"seconds": s, "marker": path}``: the marker file is created once running."""
    spec = json.loads(bytes(task.payload))
    marker = spec.get("marker")
    return float(spec["seconds"]), None if marker is None else Path(marker)


class Sleeper(TaskHandler):
    @kernel
    async def sleep(self, task: Task) -> bytes:
        seconds, marker = _sleep_spec(task)
        if marker is not None:
            marker.touch()
        await asyncio.sleep(seconds)
        return b"slept"

    @kernel("sleep-sync")
    def sleep_sync(self, task: Task) -> bytes:
        seconds, marker = _sleep_spec(task)
        if marker is not None:
            marker.touch()
        time.sleep(seconds)
        return b"slept"
