"""The grammar of a CreateLargeTasks stream: its init_request, then each task's
header and payload chunks, up to ``init_task.last_task`` and the end of the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence

from agent._chunks import chained
from agent.backend import Backend, BackendError, BlobRef, NewTask
from agent.control._config import ControlPlaneConfig
from agent.control._limits import bounded_payload, check_task_count, check_task_keys
from agent.control._status import invalid
from gridpod_api import objects_pb2, submitter_common_pb2

__all__ = ["LargeTaskStream", "store_payloads"]

logger = logging.getLogger(__name__)

_Request = submitter_common_pb2.CreateLargeTaskRequest
_TaskHeader = objects_pb2.TaskRequestHeader


# A payload that ends within this many bytes is held, and written with the next
# ones once this many payloads or bytes are held.
_SMALL_PAYLOAD = 256 * 1024
_HELD_PAYLOADS = 32
_HELD_BYTES = 1 << 20


def _describe(message: _Request) -> str:
    """The message's kind as a client wrote it: ``task_payload.data`` and so on."""
    kind = message.WhichOneof("type")
    if kind is None:
        return "a message with no field set"
    if kind == "init_request":
        return kind
    inner = getattr(message, kind).WhichOneof("type")
    return f"{kind}.{inner}" if inner else f"an empty {kind}"


class LargeTaskStream:
    """Reads one CreateLargeTasks stream; any message out of place is refused with
    INVALID_ARGUMENT naming it and its position, and a task past the control
    plane's limits with RESOURCE_EXHAUSTED."""

    def __init__(
        self, messages: AsyncIterator[_Request], config: ControlPlaneConfig
    ) -> None:
        self._messages = messages
        self._config = config
        self._count = 0

    async def init_request(self) -> _Request.InitRequest:
        first = await self._next("before init_request")
        if first.WhichOneof("type") != "init_request":
            invalid(
                f"CreateLargeTasks must start with init_request, not {_describe(first)}"
            )
        return first.init_request

    async def tasks(self, backend: Backend, session_id: str) -> list[NewTask]:
        """Every task of the stream, its payload stored as it arrives.

        Returns once the stream has ended after ``init_task.last_task``. When the
        stream breaks off, the payload being written is dropped by ``write_blob``,
        small ones held for writing are never written, and those already written
        for earlier tasks are deleted.
        """
        payloads = _Payloads(backend, session_id)
        try:
            return await self._read_tasks(payloads)
        except BaseException:
            await payloads.discard()
            raise

    async def _read_tasks(self, payloads: _Payloads) -> list[NewTask]:
        headers: list[_TaskHeader] = []
        while True:
            message = await self._next("before init_task.last_task")
            header = self._header(message, len(headers))
            if header is None:
                await self._expect_end()
                break
            index = len(headers)
            check_task_count(self._config, index + 1)
            check_task_keys(
                self._config,
                index,
                header.expected_output_keys,
                header.data_dependencies,
            )
            await payloads.add(
                bounded_payload(self._config, index, self._payload(index))
            )
            headers.append(header)
        stored = await payloads.stored()
        return [
            NewTask(
                payload=payload,
                expected_outputs=tuple(header.expected_output_keys),
                data_dependencies=tuple(header.data_dependencies),
            )
            for header, payload in zip(headers, stored, strict=True)
        ]

    def _header(self, message: _Request, index: int) -> _TaskHeader | None:
        """The header of the next task, or None at ``init_task.last_task``."""
        kind = _describe(message)
        if kind == "init_task.header":
            return message.init_task.header
        if kind == "init_task.last_task" and message.init_task.last_task:
            if index == 0:
                invalid(f"CreateLargeTasks got {self._at()} before any task")
            return None
        if kind == "init_task.last_task":
            invalid(f"CreateLargeTasks got init_task.last_task=false {self._at()}")
        invalid(
            f"CreateLargeTasks expected init_task.header or init_task.last_task "
            f"{self._at()}, got {kind}"
        )

    async def _payload(self, index: int) -> AsyncIterator[bytes]:
        """The payload chunks of task ``index`` (from 0), up to data_complete."""
        while True:
            message = await self._next(f"in the payload of task {index}")
            kind = _describe(message)
            if kind == "task_payload.data":
                yield message.task_payload.data
            elif kind == "task_payload.data_complete":
                if not message.task_payload.data_complete:
                    invalid(
                        "CreateLargeTasks got task_payload.data_complete=false "
                        f"{self._at()}"
                    )
                return
            else:
                invalid(
                    f"CreateLargeTasks expected task_payload of task {index} "
                    f"{self._at()}, got {kind}"
                )

    async def _expect_end(self) -> None:
        # Only a stream that ends cleanly is served: anything after last_task is a
        # client bug that would otherwise go unnoticed.
        try:
            extra = await anext(self._messages)
        except StopAsyncIteration:
            return
        self._count += 1
        invalid(
            f"CreateLargeTasks got {_describe(extra)} {self._at()}, after "
            "init_task.last_task"
        )

    async def _next(self, where: str) -> _Request:
        try:
            message = await anext(self._messages)
        except StopAsyncIteration:
            invalid(f"the CreateLargeTasks stream ended {where}")
        self._count += 1
        return message

    def _at(self) -> str:
        return f"in message {self._count}"


class _Payloads:
    """The payloads of one stream, in order, as they are stored: a small one is
    held, then written with the next ones at once; a large one is written as it
    arrives, never held whole."""

    def __init__(self, backend: Backend, session_id: str) -> None:
        self._backend = backend
        # Where the payloads go: beside the session's records.
        self._session_id = session_id
        self._stored: list[BlobRef | None] = []
        self._held: dict[int, list[bytes]] = {}
        self._held_bytes = 0

    async def add(self, chunks: AsyncIterator[bytes]) -> None:
        taken: list[bytes] = []
        size = 0
        while size <= _SMALL_PAYLOAD:
            chunk = await anext(chunks, None)
            if chunk is None:
                await self._hold(taken, size)
                return
            taken.append(chunk)
            size += len(chunk)
        self._stored.append(
            await self._backend.write_blob(
                chained(taken, chunks), session_id=self._session_id
            )
        )

    async def _hold(self, chunks: list[bytes], size: int) -> None:
        self._held[len(self._stored)] = chunks
        self._stored.append(None)
        self._held_bytes += size
        if len(self._held) >= _HELD_PAYLOADS or self._held_bytes >= _HELD_BYTES:
            await self._write_held()

    async def _write_held(self) -> None:
        held, self._held, self._held_bytes = self._held, {}, 0
        stored = await store_payloads(
            self._backend, list(held.values()), self._session_id
        )
        for index, payload in zip(held, stored, strict=True):
            self._stored[index] = payload

    async def discard(self) -> None:
        written = [payload.blob_id for payload in self._stored if payload is not None]
        try:
            await asyncio.shield(self._backend.discard_blobs(written))
        except BackendError:
            logger.warning("cannot delete %d unused payloads", len(written))

    async def stored(self) -> list[BlobRef]:
        await self._write_held()
        stored = [payload for payload in self._stored if payload is not None]
        assert len(stored) == len(self._stored), "every payload is written"
        return stored


async def store_payloads(
    backend: Backend, payloads: Sequence[Sequence[bytes]], session_id: str
) -> list[BlobRef]:
    """Store each payload, given as its chunks, all at once: a backend may write
    calls that come together in one transaction, which costs less than one each."""
    writes = [
        asyncio.ensure_future(
            backend.write_blob(_listed(chunks), session_id=session_id)
        )
        for chunks in payloads
    ]
    try:
        return list(await asyncio.gather(*writes))
    except BaseException:
        # The others are not needed any more; each drops what it wrote.
        for write in writes:
            write.cancel()
        raise


async def _listed(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
