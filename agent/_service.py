"""The Agent service a worker calls while it runs a task: results, subtasks, data.

Requests carry the running attempt's communication token. A token that names no
running attempt, a key the task does not own and a key with no data are answered with
the in-band error field of the reply, as ArmoniK's agent does, and store nothing. A
stream that breaks the message grammar gets INVALID_ARGUMENT, one past the agent's
limits RESOURCE_EXHAUSTED, and neither stores anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import grpc

from agent import _metrics
from agent._busy_poll import BusyPoll
from agent._chunks import chained, single
from agent._registry import AttemptRegistry, Running
from agent.backend import (
    Attempt,
    Backend,
    BackendError,
    BlobRef,
    NewTask,
    NotCompleted,
    NotFound,
    TaskRecord,
    TaskRefusal,
)
from gridpod_api import agent_common_pb2, agent_service_pb2_grpc, objects_pb2
from worker_sdk._data import iter_chunks

__all__ = ["AgentLimits", "AgentService"]

logger = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]
_DataReply = agent_common_pb2.DataReply

_UNKNOWN_TOKEN = "the communication token names no running task"

# Results up to this size wait in memory and are stored by the task's commit.
_HELD_RESULT_MAX = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class AgentLimits:
    """Bounds on what one call of the worker may make the agent store, each refused
    with RESOURCE_EXHAUSTED naming it and its value."""

    # Bytes of one subtask's payload, and of one result's data.
    max_payload_size: int = 1 << 30
    max_result_size: int = 1 << 30
    # Subtasks of one CreateTask stream, and the keys of one subtask.
    max_tasks_per_request: int = 10_000
    max_data_dependencies: int = 10_000
    max_expected_outputs: int = 10_000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"{name} must be positive, not {value}")


class _Refused(Exception):
    """A stream answered with a status, rather than with its reply's error."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class _GrammarError(_Refused):
    """A stream broke the grammar of its RPC."""


class _StreamEnded(_GrammarError):
    """The stream ended where more messages were due."""


class _LimitExceeded(_Refused):
    """A stream went past one of the agent's limits."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class _Stream:
    """Pulls messages of one client stream, checking they all carry one token."""

    def __init__(self, messages: AsyncIterator[Any], rpc: str) -> None:
        self._messages = messages
        self.rpc = rpc
        self.token: str | None = None

    async def next(self, expecting: str) -> Any:
        try:
            message = await anext(self._messages)
        except StopAsyncIteration:
            raise _StreamEnded(
                f"the {self.rpc} stream ended while expecting {expecting}"
            ) from None
        if self.token is None:
            self.token = message.communication_token
        elif message.communication_token != self.token:
            raise _GrammarError(
                f"a {self.rpc} message carries another communication token "
                "than the first one"
            )
        return message


async def _abort(context: _Context, error: _Refused) -> NoReturn:
    logger.warning("refused a stream: %s", error)
    await context.abort(error.code, str(error))
    raise AssertionError("unreachable: abort raises")


def _kind(message: Any, oneof: str = "type") -> str | None:
    kind: str | None = message.WhichOneof(oneof)
    return kind


async def _chunks(stream: _Stream, field: str, what: str) -> AsyncIterator[bytes]:
    """The data of ``field`` messages up to the one with ``data_complete``."""
    while True:
        message = await stream.next(what)
        if _kind(message) != field:
            raise _GrammarError(
                f"{stream.rpc} expected {what}, got {_kind(message) or 'nothing'}"
            )
        chunk = getattr(message, field)
        if _kind(chunk) == "data":
            yield chunk.data
        elif chunk.data_complete:
            return
        else:
            raise _GrammarError(f"a {stream.rpc} {field} message holds no data")


async def _bounded(
    chunks: AsyncIterator[bytes], limit: int, name: str, what: str
) -> AsyncIterator[bytes]:
    """The chunks, refused once they add up to more than ``limit`` bytes: a blob
    being written from them is then dropped."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _LimitExceeded(f"{what} is larger than {name} ({limit} bytes)")
        yield chunk


def _options_error(options: objects_pb2.TaskOptions) -> str | None:
    """Why the subtasks' options cannot be used, if they cannot."""
    if options.max_retries < 0:
        return f"task_options.max_retries must not be negative: {options.max_retries}"
    if not options.HasField("max_duration"):
        return None
    duration = options.max_duration
    try:
        # The agent that runs a subtask reads it as a timedelta.
        duration.ToTimedelta()
    except OverflowError:
        return f"task_options.max_duration of {duration.seconds} seconds is too long"
    if duration.seconds < 0 or duration.nanos < 0:
        return "task_options.max_duration must not be negative"
    return None


class AgentService(agent_service_pb2_grpc.AgentServicer):
    def __init__(
        self,
        backend: Backend,
        registry: AttemptRegistry,
        chunk_size: int,
        limits: AgentLimits | None = None,
        *,
        busy_poll: BusyPoll | None = None,
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._chunk_size = chunk_size
        self._limits = limits or AgentLimits()
        # Each call of the worker's is a hand-off, as it arrives and as it ends.
        self._busy_poll = busy_poll or BusyPoll(timedelta(0))

    # -- SendResult ---------------------------------------------------------------

    async def SendResult(
        self,
        request_iterator: AsyncIterator[agent_common_pb2.Result],
        context: _Context,
    ) -> agent_common_pb2.ResultReply:
        with self._busy_poll.hand_off():
            return await self._send_result(request_iterator, context)

    async def _send_result(
        self,
        request_iterator: AsyncIterator[agent_common_pb2.Result],
        context: _Context,
    ) -> agent_common_pb2.ResultReply:
        stream = _Stream(request_iterator, "SendResult")
        try:
            first = await stream.next("init")
            running = self._registry.get(first.communication_token)
            if running is None:
                return self._result_error(first.communication_token, _UNKNOWN_TOKEN)
            received = await self._receive_results(stream, first, running)
        except _Refused as error:
            await _abort(context, error)
        token = running.attempt.token
        if isinstance(received, str):
            return self._result_error(token, received)
        if self._registry.get(token) is not running:
            # The attempt ended while the results streamed in: they were not kept.
            return self._result_error(token, _UNKNOWN_TOKEN)
        running.answered()
        return agent_common_pb2.ResultReply(
            communication_token=token, Ok=objects_pb2.Empty()
        )

    async def _receive_results(
        self, stream: _Stream, message: Any, running: Running
    ) -> int | str:
        """Take every result of the stream; their count, or the in-band error.

        A result counts once its data is complete, so a stream broken midway
        leaves the earlier, whole results and nothing of the broken one.
        """
        received = 0
        while True:
            if _kind(message) != "init":
                got = _kind(message) or "an empty message"
                raise _GrammarError(f"SendResult expected init, got {got}")
            if _kind(message.init) == "last_result" and not message.init.last_result:
                raise _GrammarError("SendResult got init.last_result=false")
            if _kind(message.init) != "key":
                return received  # init.last_result, or an empty init ending it
            key = message.init.key
            if not running.owns(key):
                return (
                    f"task {running.attempt.task.task_id} does not own result {key!r}"
                )
            chunks = _bounded(
                _chunks(stream, "data", f"data of result {key!r}"),
                self._limits.max_result_size,
                "max_result_size",
                f"result {key!r}",
            )
            try:
                size = await self._keep_result(running, key, chunks)
            except BackendError as error:
                return str(error)
            _metrics.BYTES_FROM_WORKER.inc(size)
            received += 1
            message = await self._next_result_or_end(stream)
            if message is None:
                return received

    async def _keep_result(
        self, running: Running, key: str, chunks: AsyncIterator[bytes]
    ) -> int:
        """Hold a small result for the commit; stage a large one in the backend."""
        held: list[bytes] = []
        size = 0
        async for chunk in chunks:
            held.append(chunk)
            size += len(chunk)
            if size > _HELD_RESULT_MAX:
                blob = await self._backend.stage_result_data(
                    running.attempt, key, chained(held, chunks)
                )
                # Only now: a result refused midway leaves the value held before.
                running.results.pop(key, None)
                return blob.size
        running.results[key] = b"".join(held)
        return size

    async def _next_result_or_end(self, stream: _Stream) -> Any | None:
        try:
            return await stream.next("init")
        except _StreamEnded:
            return None  # a stream may end right after a complete result

    @staticmethod
    def _result_error(token: str, reason: str) -> agent_common_pb2.ResultReply:
        logger.info("SendResult refused: %s", reason)
        return agent_common_pb2.ResultReply(communication_token=token, Error=reason)

    # -- CreateTask ---------------------------------------------------------------

    async def CreateTask(
        self,
        request_iterator: AsyncIterator[agent_common_pb2.CreateTaskRequest],
        context: _Context,
    ) -> agent_common_pb2.CreateTaskReply:
        with self._busy_poll.hand_off():
            return await self._serve_create_task(request_iterator, context)

    async def _serve_create_task(
        self,
        request_iterator: AsyncIterator[agent_common_pb2.CreateTaskRequest],
        context: _Context,
    ) -> agent_common_pb2.CreateTaskReply:
        stream = _Stream(request_iterator, "CreateTask")
        # The payloads written for the stream's tasks: those that no created task
        # took are deleted before the reply goes out, whatever the outcome.
        written: list[BlobRef] = []
        try:
            reply, taken = await self._create_tasks(stream, written)
        except _Refused as error:
            await self._discard(written)
            await _abort(context, error)
        except BaseException:
            await self._discard(written)
            raise
        await self._discard(blob for blob in written if blob.blob_id not in taken)
        return reply

    async def _create_tasks(
        self, stream: _Stream, written: list[BlobRef]
    ) -> tuple[agent_common_pb2.CreateTaskReply, set[str]]:
        """The reply, and the payload blobs of the tasks created."""
        first = await stream.next("init_request")
        if _kind(first) != "init_request":
            raise _GrammarError(
                f"CreateTask expected init_request first, got {_kind(first)}"
            )
        token = first.communication_token
        running = self._registry.get(token)
        if running is None:
            return self._creation_error(token, _UNKNOWN_TOKEN), set()
        options = first.init_request.task_options
        refusal = _options_error(options)
        if refusal is not None:
            return self._creation_error(token, refusal), set()
        try:
            tasks = await self._receive_tasks(
                stream, written, running.attempt.task.session_id
            )
            # The backend refuses to delegate an output already sent: it must see
            # the results held here before it decides.
            await self._stage_held_results(running)
            created = await self._backend.stage_subtasks(
                running.attempt, tasks, options
            )
        except BackendError as error:
            return self._creation_error(token, str(error)), set()
        own_outputs = set(running.attempt.task.expected_outputs)
        taken = set()
        for task in created:
            if isinstance(task, TaskRecord):
                running.delegated.update(set(task.expected_outputs) & own_outputs)
                taken.add(task.payload.blob_id)
        return self._creation_reply(token, created), taken

    async def _discard(self, payloads: Iterable[BlobRef]) -> None:
        unused = [payload.blob_id for payload in payloads]
        if not unused:
            return
        try:
            await asyncio.shield(self._backend.discard_blobs(unused))
        except BackendError:
            logger.warning("cannot delete %d unused payloads", len(unused))

    async def _stage_held_results(self, running: Running) -> None:
        for key, data in list(running.results.items()):
            await self._backend.stage_result_data(running.attempt, key, single(data))
            del running.results[key]

    async def _receive_tasks(
        self, stream: _Stream, written: list[BlobRef], session_id: str
    ) -> list[NewTask]:
        limits = self._limits
        tasks: list[NewTask] = []
        while True:
            message = await stream.next("init_task")
            if _kind(message) != "init_task":
                raise _GrammarError(
                    f"CreateTask expected init_task, got {_kind(message)}"
                )
            if _kind(message.init_task) != "header":
                if not message.init_task.last_task:
                    got = "last_task=false" if _kind(message.init_task) else "nothing"
                    raise _GrammarError(
                        f"CreateTask expected init_task.header or last_task, got {got}"
                    )
                if not tasks:
                    raise _GrammarError(
                        "CreateTask ended with last_task before any task"
                    )
                return tasks
            header = message.init_task.header
            index = len(tasks)
            self._check_task(
                index, header.expected_output_keys, header.data_dependencies
            )
            payload = _bounded(
                _chunks(stream, "task_payload", "task_payload"),
                limits.max_payload_size,
                "max_payload_size",
                f"the payload of task {index}",
            )
            blob = await self._backend.write_blob(payload, session_id=session_id)
            written.append(blob)
            _metrics.BYTES_FROM_WORKER.inc(blob.size)
            tasks.append(
                NewTask(
                    payload=blob,
                    expected_outputs=tuple(header.expected_output_keys),
                    data_dependencies=tuple(header.data_dependencies),
                )
            )

    def _check_task(
        self, index: int, outputs: Sequence[str], dependencies: Sequence[str]
    ) -> None:
        limits = self._limits
        if index >= limits.max_tasks_per_request:
            raise _LimitExceeded(
                "CreateTask holds more than max_tasks_per_request "
                f"({limits.max_tasks_per_request}) tasks"
            )
        if len(outputs) > limits.max_expected_outputs:
            raise _LimitExceeded(
                f"task {index} has {len(outputs)} expected outputs, more than "
                f"max_expected_outputs ({limits.max_expected_outputs})"
            )
        if len(dependencies) > limits.max_data_dependencies:
            raise _LimitExceeded(
                f"task {index} has {len(dependencies)} data dependencies, more than "
                f"max_data_dependencies ({limits.max_data_dependencies})"
            )

    @staticmethod
    def _creation_error(token: str, reason: str) -> agent_common_pb2.CreateTaskReply:
        logger.info("CreateTask refused: %s", reason)
        return agent_common_pb2.CreateTaskReply(communication_token=token, error=reason)

    @staticmethod
    def _creation_reply(
        token: str, created: list[Any]
    ) -> agent_common_pb2.CreateTaskReply:
        Reply = agent_common_pb2.CreateTaskReply
        statuses = []
        for item in created:
            if isinstance(item, TaskRefusal):
                statuses.append(Reply.CreationStatus(error=item.reason))
            else:
                info = Reply.TaskInfo(
                    task_id=item.task_id,
                    expected_output_keys=item.expected_outputs,
                    data_dependencies=item.data_dependencies,
                )
                statuses.append(Reply.CreationStatus(task_info=info))
        return Reply(
            communication_token=token,
            creation_status_list=Reply.CreationStatusList(creation_statuses=statuses),
        )

    # -- Get*Data -----------------------------------------------------------------

    async def GetResourceData(
        self, request: agent_common_pb2.DataRequest, context: _Context
    ) -> AsyncIterator[agent_common_pb2.DataReply]:
        source = lambda attempt: self._backend.read_resource(request.key)  # noqa: E731
        async for reply in self._data_replies(request, source):
            yield reply

    async def GetCommonData(
        self, request: agent_common_pb2.DataRequest, context: _Context
    ) -> AsyncIterator[agent_common_pb2.DataReply]:
        def source(attempt: Attempt) -> AsyncIterator[bytes]:
            return self._backend.read_result(attempt.task.session_id, request.key)

        async for reply in self._data_replies(request, source):
            yield reply

    async def GetDirectData(
        self, request: agent_common_pb2.DataRequest, context: _Context
    ) -> AsyncIterator[agent_common_pb2.DataReply]:
        token = request.communication_token
        if self._registry.get(token) is None:
            yield _DataReply(communication_token=token, error=_UNKNOWN_TOKEN)
            return
        yield _DataReply(
            communication_token=token,
            init=_DataReply.Init(
                key=request.key, error="GetDirectData is not supported by this agent"
            ),
        )

    async def _data_replies(
        self,
        request: agent_common_pb2.DataRequest,
        source: Callable[[Attempt], AsyncIterator[bytes]],
    ) -> AsyncIterator[agent_common_pb2.DataReply]:
        with self._busy_poll.hand_off():
            async for reply in self._data_of(request, source):
                yield reply

    async def _data_of(
        self,
        request: agent_common_pb2.DataRequest,
        source: Callable[[Attempt], AsyncIterator[bytes]],
    ) -> AsyncIterator[agent_common_pb2.DataReply]:
        token, key = request.communication_token, request.key
        running = self._registry.get(token)
        if running is None:
            yield _DataReply(communication_token=token, error=_UNKNOWN_TOKEN)
            return
        chunks = self._rechunked(source(running.attempt))
        try:
            first = await anext(chunks, b"")
        except (NotFound, NotCompleted) as error:
            yield _DataReply(
                communication_token=token,
                init=_DataReply.Init(key=key, error=str(error)),
            )
            return
        yield _DataReply(
            communication_token=token,
            init=_DataReply.Init(key=key, data=objects_pb2.DataChunk(data=first)),
        )
        async for chunk in chunks:
            yield _DataReply(
                communication_token=token, data=objects_pb2.DataChunk(data=chunk)
            )
        yield _DataReply(
            communication_token=token, data=objects_pb2.DataChunk(data_complete=True)
        )

    async def _rechunked(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        # Stored chunks were cut by whoever wrote them; the worker gets ours.
        async for chunk in chunks:
            for piece in iter_chunks(chunk, self._chunk_size):
                yield piece
