"""The Agent service a worker calls while it runs a task: results, subtasks, data.

Requests carry the running attempt's communication token. A token that names no
running attempt, a key the task does not own and a key with no data are answered with
the in-band error field of the reply, as ArmoniK's agent does, and store nothing. A
stream that breaks the message grammar gets INVALID_ARGUMENT and stores nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from agent import _metrics
from agent._chunks import chained, single
from agent._registry import AttemptRegistry, Running
from agent.backend import (
    Attempt,
    Backend,
    BackendError,
    NewTask,
    NotCompleted,
    NotFound,
    TaskRecord,
    TaskRefusal,
)
from gridpod_api import agent_common_pb2, agent_service_pb2_grpc, objects_pb2
from worker_sdk._data import iter_chunks

logger = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]
_DataReply = agent_common_pb2.DataReply

_UNKNOWN_TOKEN = "the communication token names no running task"

# Results up to this size wait in memory and are stored by the task's commit.
_HELD_RESULT_MAX = 1024 * 1024


class _GrammarError(Exception):
    """A stream broke the grammar of its RPC."""


class _StreamEnded(_GrammarError):
    """The stream ended where more messages were due."""


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


async def _abort(context: _Context, error: _GrammarError) -> NoReturn:
    logger.warning("refused a stream: %s", error)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
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


class AgentService(agent_service_pb2_grpc.AgentServicer):
    def __init__(
        self, backend: Backend, registry: AttemptRegistry, chunk_size: int
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._chunk_size = chunk_size

    # -- SendResult ---------------------------------------------------------------

    async def SendResult(
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
        except _GrammarError as error:
            await _abort(context, error)
        token = running.attempt.token
        if isinstance(received, str):
            return self._result_error(token, received)
        if self._registry.get(token) is not running:
            # The attempt ended while the results streamed in: they were not kept.
            return self._result_error(token, _UNKNOWN_TOKEN)
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
            if _kind(message.init) != "key":
                return received  # init.last_result, or an empty init ending it
            key = message.init.key
            if not running.owns(key):
                return (
                    f"task {running.attempt.task.task_id} does not own result {key!r}"
                )
            chunks = _chunks(stream, "data", f"data of result {key!r}")
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
                running.results.pop(key, None)
                blob = await self._backend.stage_result_data(
                    running.attempt, key, chained(held, chunks)
                )
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
        stream = _Stream(request_iterator, "CreateTask")
        try:
            first = await stream.next("init_request")
            if _kind(first) != "init_request":
                raise _GrammarError(
                    f"CreateTask expected init_request first, got {_kind(first)}"
                )
            running = self._registry.get(first.communication_token)
            if running is None:
                return self._creation_error(first.communication_token, _UNKNOWN_TOKEN)
            tasks = await self._receive_tasks(stream)
        except _GrammarError as error:
            await _abort(context, error)
        except BackendError as error:
            return self._creation_error(first.communication_token, str(error))
        attempt = running.attempt
        options = first.init_request.task_options
        try:
            # The backend refuses to delegate an output already sent: it must see
            # the results held here before it decides.
            await self._stage_held_results(running)
            created = await self._backend.stage_subtasks(attempt, tasks, options)
        except BackendError as error:
            return self._creation_error(attempt.token, str(error))
        for task in created:
            if isinstance(task, TaskRecord):
                running.delegated.update(
                    set(task.expected_outputs) & set(attempt.task.expected_outputs)
                )
        return self._creation_reply(attempt.token, created)

    async def _stage_held_results(self, running: Running) -> None:
        for key, data in list(running.results.items()):
            await self._backend.stage_result_data(running.attempt, key, single(data))
            del running.results[key]

    async def _receive_tasks(self, stream: _Stream) -> list[NewTask]:
        tasks: list[NewTask] = []
        while True:
            message = await stream.next("init_task")
            if _kind(message) != "init_task":
                raise _GrammarError(
                    f"CreateTask expected init_task, got {_kind(message)}"
                )
            if _kind(message.init_task) != "header":
                if not tasks:
                    raise _GrammarError(
                        "CreateTask ended with last_task before any task"
                    )
                return tasks
            header = message.init_task.header
            blob = await self._backend.write_blob(
                _chunks(stream, "task_payload", "task_payload")
            )
            _metrics.BYTES_FROM_WORKER.inc(blob.size)
            tasks.append(
                NewTask(
                    payload=blob,
                    expected_outputs=tuple(header.expected_output_keys),
                    data_dependencies=tuple(header.data_dependencies),
                )
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
