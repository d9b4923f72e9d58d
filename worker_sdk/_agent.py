"""The worker's side of the Agent service: results, subtasks and data, as streams.

``AgentPort`` is what a running task needs from an agent; ``AgentClient`` speaks it
over gRPC, and ``worker_sdk.testing`` provides an in-memory one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Literal, Protocol, TypeVar

from gridpod_api import agent_common_pb2, agent_service_pb2_grpc, objects_pb2
from worker_sdk._address import Address, ChannelTls, open_channel
from worker_sdk._data import DEFAULT_SPILL_THRESHOLD, DataSink, iter_chunks
from worker_sdk._errors import (
    AgentError,
    DataUnavailable,
    ProtocolError,
    ResultRefused,
    TaskCreationRefused,
)
from worker_sdk._model import CreatedTask, DataSource, TaskDefinition, TaskOptions

DataKind = Literal["resource", "common", "direct"]
M = TypeVar("M")

_Result = agent_common_pb2.Result
_Init = objects_pb2.InitKeyedDataStream
_Request = agent_common_pb2.CreateTaskRequest

# No legitimate message is refused for its size: chunking bounds what we send, and the
# agent's chunks are bounded by what it chose.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


class AgentPort(Protocol):
    async def send_result(
        self, token: str, key: str, data: DataSource, chunk_size: int
    ) -> None: ...

    async def create_tasks(
        self,
        token: str,
        definitions: Sequence[TaskDefinition],
        options: TaskOptions | None,
        chunk_size: int,
    ) -> list[CreatedTask]: ...

    async def get_data(self, token: str, kind: DataKind, key: str) -> memoryview: ...


def result_messages(
    token: str, key: str, data: DataSource, chunk_size: int
) -> Iterable[agent_common_pb2.Result]:
    """The SendResult stream for one result, the last message included."""
    yield _Result(communication_token=token, init=_Init(key=key))
    for chunk in iter_chunks(data, chunk_size):
        yield _Result(communication_token=token, data=objects_pb2.DataChunk(data=chunk))
    yield _Result(
        communication_token=token, data=objects_pb2.DataChunk(data_complete=True)
    )
    yield _Result(communication_token=token, init=_Init(last_result=True))


def create_task_messages(
    token: str,
    definitions: Sequence[TaskDefinition],
    options: TaskOptions | None,
    chunk_size: int,
) -> Iterable[agent_common_pb2.CreateTaskRequest]:
    """The CreateTask stream for ``definitions``, the closing last_task included."""
    task_options = (options or TaskOptions()).to_proto()
    yield _Request(
        communication_token=token,
        init_request=_Request.InitRequest(task_options=task_options),
    )
    for definition in definitions:
        header = objects_pb2.TaskRequestHeader(
            expected_output_keys=definition.expected_outputs,
            data_dependencies=definition.data_dependencies,
        )
        yield _Request(
            communication_token=token,
            init_task=objects_pb2.InitTaskRequest(header=header),
        )
        for chunk in iter_chunks(definition.payload, chunk_size):
            yield _Request(
                communication_token=token,
                task_payload=objects_pb2.DataChunk(data=chunk),
            )
        yield _Request(
            communication_token=token,
            task_payload=objects_pb2.DataChunk(data_complete=True),
        )
    yield _Request(
        communication_token=token, init_task=objects_pb2.InitTaskRequest(last_task=True)
    )


def created_tasks(
    reply: agent_common_pb2.CreateTaskReply, expected: int
) -> list[CreatedTask]:
    """Turn a CreateTask reply into created tasks, or raise what was refused."""
    if reply.WhichOneof("Response") == "error":
        raise TaskCreationRefused([reply.error])
    if reply.WhichOneof("Response") != "creation_status_list":
        raise TaskCreationRefused(["the agent's reply holds no status for any task"])
    created, refused = [], []
    statuses = reply.creation_status_list.creation_statuses
    for index, status in enumerate(statuses):
        if status.WhichOneof("Status") == "task_info":
            info = status.task_info
            created.append(
                CreatedTask(
                    info.task_id,
                    tuple(info.expected_output_keys),
                    tuple(info.data_dependencies),
                )
            )
        else:
            refused.append(
                f"task {index}: {status.error or 'refused without a reason'}"
            )
    if len(statuses) != expected:
        refused.append(f"{expected} tasks were sent but {len(statuses)} answered")
    if refused:
        raise TaskCreationRefused(refused, created)
    return created


class AgentClient:
    """``AgentPort`` over a gRPC channel to the agent of the pod, at ``address``
    (an ``Address``, or its text); over TLS when ``tls`` is given and it is TCP."""

    def __init__(
        self,
        address: Address | str,
        spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
        spill_dir: str | None = None,
        *,
        tls: ChannelTls | None = None,
    ) -> None:
        if isinstance(address, str):
            address = Address.parse(address)
        self._channel = open_channel(address, tls, CHANNEL_OPTIONS)
        self._stub = agent_service_pb2_grpc.AgentStub(self._channel)
        self._spill = (spill_threshold, spill_dir)

    async def close(self) -> None:
        await self._channel.close()

    async def send_result(
        self, token: str, key: str, data: DataSource, chunk_size: int
    ) -> None:
        messages = result_messages(token, key, data, chunk_size)
        # A value of one chunk is sent from a list, which grpc.aio walks without
        # the hops of an async iterator; larger data is built as it is taken.
        small = isinstance(data, bytes) and len(data) <= chunk_size
        reply = await self._stub.SendResult(
            iter(list(messages)) if small else _aiter(messages)
        )
        if reply.WhichOneof("type") == "Error":
            raise ResultRefused(key, reply.Error)

    async def create_tasks(
        self,
        token: str,
        definitions: Sequence[TaskDefinition],
        options: TaskOptions | None,
        chunk_size: int,
    ) -> list[CreatedTask]:
        messages = create_task_messages(token, definitions, options, chunk_size)
        reply = await self._stub.CreateTask(_aiter(messages))
        return created_tasks(reply, len(definitions))

    async def get_data(self, token: str, kind: DataKind, key: str) -> memoryview:
        method = {
            "resource": self._stub.GetResourceData,
            "common": self._stub.GetCommonData,
            "direct": self._stub.GetDirectData,
        }[kind]
        request = agent_common_pb2.DataRequest(communication_token=token, key=key)
        sink = DataSink(*self._spill)
        await read_data_reply(method(request), kind, key, sink)
        return sink.view()


async def read_data_reply(
    replies: Any,  # a grpc.aio UnaryStreamCall, or any async iterable of DataReply
    kind: DataKind,
    key: str,
    sink: DataSink,
) -> None:
    """Follow a Get*Data reply stream: init{key, data|error}, data chunks, complete."""
    first = True
    async for reply in replies:
        which = reply.WhichOneof("type")
        if which == "error":
            raise DataUnavailable(kind, key, reply.error)
        if first != (which == "init"):
            raise ProtocolError(f"Get{kind.title()}Data sent {which} out of order")
        chunk = reply.init.data if first else reply.data
        if first and reply.init.WhichOneof("has_result") == "error":
            raise DataUnavailable(kind, key, reply.init.error)
        first = False
        if chunk.WhichOneof("type") == "data":
            sink.write(chunk.data)
        elif chunk.data_complete:
            return
    raise AgentError(f"Get{kind.title()}Data for {key!r} ended before data_complete")


async def _aiter(messages: Iterable[M]) -> AsyncIterator[M]:
    # grpc.aio pulls an async iterator message by message, so chunks are built (and
    # files read) only as fast as the agent takes them.
    for message in messages:
        yield message
