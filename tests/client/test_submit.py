"""Submitting tasks to a real control plane: batches, large payloads, refusals."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.client.support import CHUNK_SIZE, PlaneThread
from worker_sdk.client import (
    AsyncClient,
    AsyncSession,
    SubmissionError,
    TaskOptions,
    TaskSpec,
    TaskStatus,
)

_SUBMITTER = "/armonik.api.grpc.v1.submitter.Submitter/"


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        self.methods.append(_name(client_call_details))
        return await continuation(client_call_details, request)


class _Streaming(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, methods: list[str]) -> None:
        self.methods = methods

    async def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        self.methods.append(_name(client_call_details))
        return await continuation(client_call_details, request_iterator)


def _name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    name = method.decode() if isinstance(method, bytes) else str(method)
    return name.removeprefix(_SUBMITTER)


def _counting(address: str, methods: list[str]) -> AsyncClient:
    """A client that records the name of each unary and client-streaming call."""
    # A channel files each interceptor under one kind only: one object per kind.
    return AsyncClient(address, interceptors=[_Unary(methods), _Streaming(methods)])


async def test_thousands_of_small_tasks_go_in_several_requests_all_created(
    plane: PlaneThread,
) -> None:
    methods: list[str] = []
    async with _counting(plane.address, methods) as client:
        session = await client.create_session()
        specs = (TaskSpec(f"task {i}".encode()) for i in range(2_500))
        tasks = await session.submit(specs, batch_size=1_000)
        listed = await session.list_tasks()
    submitted = [m for m in methods if m.startswith("Create")]
    assert submitted == ["CreateSession", *["CreateSmallTasks"] * 3]
    assert len({task.task_id for task in tasks}) == 2_500
    assert {t.task_id for t in listed} == {t.task_id for t in tasks}
    assert {t.status for t in listed} == {TaskStatus.SUBMITTED}


async def test_streamed_payloads_go_as_one_stream_per_batch(
    plane: PlaneThread,
) -> None:
    methods: list[str] = []
    async with _counting(plane.address, methods) as client:
        session = await client.create_session()
        specs = [TaskSpec(iter([f"task {i}".encode()])) for i in range(5)]
        tasks = await session.submit(specs, batch_size=2)
        await plane.awork()
        assert [await session.result(t.output) for t in tasks] == [
            f"task {i}".encode() for i in range(5)
        ]
    submitted = [m for m in methods if m.startswith("Create")]
    assert submitted == ["CreateSession", *["CreateLargeTasks"] * 3]


async def test_a_large_payload_from_a_file_streams_in_chunks_and_comes_back(
    plane: PlaneThread, session: AsyncSession, tmp_path: Path
) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(32 * 1024 * 1024))
    [task] = await session.submit([TaskSpec(source)])
    await plane.awork()
    chunks = [chunk async for chunk in session.stream_result(task.output)]
    assert len(chunks) == 32 * 1024 * 1024 // CHUNK_SIZE
    assert max(len(c) for c in chunks) == CHUNK_SIZE
    copy = tmp_path / "copy.bin"
    size = await session.result_to(task.output, copy)
    assert size == source.stat().st_size
    assert _digest(copy) == _digest(source)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_payload_given_as_chunks_is_sent_whole(
    plane: PlaneThread, session: AsyncSession
) -> None:
    def pieces() -> Iterator[bytes | memoryview]:
        yield b"a" * 100_000
        yield b""
        yield memoryview(b"b" * 10)

    [task] = await session.submit([TaskSpec(pieces())])
    await plane.awork()
    assert await session.result(task.output) == b"a" * 100_000 + b"b" * 10


async def test_a_duplicate_key_refuses_that_task_and_creates_the_others(
    session: AsyncSession,
) -> None:
    await session.submit([TaskSpec(expected_outputs=["taken"])])
    specs = [
        TaskSpec(expected_outputs=["fresh"]),
        TaskSpec(expected_outputs=["taken"]),
        TaskSpec(expected_outputs=["other"]),
    ]
    with pytest.raises(SubmissionError) as caught:
        await session.submit(specs, batch_size=2)
    error = caught.value
    assert [r.index for r in error.refusals] == [1]
    assert "taken" in error.refusals[0].reason
    assert [t.expected_outputs for t in error.submitted] == [("fresh",), ("other",)]
    assert "refused 1 of 3 tasks (task 1: " in str(error)
    statuses = await session.task_status([t.task_id for t in error.submitted])
    assert set(statuses.values()) == {TaskStatus.SUBMITTED}


async def test_options_are_merged_over_the_session_defaults(
    async_client: AsyncClient,
) -> None:
    defaults = TaskOptions(max_retries=4, options={"kernel": "echo"})
    session = await async_client.create_session(defaults)
    [task] = await session.submit([TaskSpec(b"x")], TaskOptions(priority=7))
    details = await session.get_task(task.task_id)
    assert (details.options.max_retries, details.options.priority) == (4, 7)
    assert details.options.kernel == "echo"
    assert details.expected_outputs == task.expected_outputs


async def test_a_task_may_depend_on_an_output_of_an_earlier_batch(
    plane: PlaneThread, session: AsyncSession
) -> None:
    specs = [
        TaskSpec(b"first", expected_outputs=["a"]),
        TaskSpec(b"second", expected_outputs=["b"], data_dependencies=["a"]),
    ]
    first, second = await session.submit(specs, batch_size=1)
    assert (first.expected_outputs, second.data_dependencies) == (("a",), ("a",))
    assert await session.task_status([second.task_id]) == {
        second.task_id: TaskStatus.CREATING
    }
    await plane.awork()
    assert await session.wait() == {TaskStatus.COMPLETED: 2}


async def test_a_payload_of_chunks_is_never_held_whole(session: AsyncSession) -> None:
    mebibyte = 1024 * 1024

    def pieces() -> Iterator[bytes]:
        for index in range(64):
            yield bytes([index]) * mebibyte

    tracemalloc.start()
    try:
        [task] = await session.submit([TaskSpec(pieces())])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert task.task_id
    # Control plane and client share this process: the peak bounds them both.
    assert peak < 16 * mebibyte
