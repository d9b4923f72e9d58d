"""The floor the worker SDK is measured against: a Worker server in bare grpc.aio.

``python bench/bare_worker.py --address unix:PATH --agent unix:PATH --kernel K``
serves until SIGTERM. Per task it reads the Process stream, sends one result to the
agent with SendResult and replies ok; it checks nothing it does not need. With
``--calls PATH`` it writes, on the way out, one line per Process call: the task id and
the wall-clock times the call reached the worker and left it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

# Before grpc, so that this process runs gRPC with our processes' settings.
import worker_sdk._grpc_defaults  # noqa: F401  # isort: skip
import grpc
import uvloop

from gridpod_api import (
    agent_common_pb2,
    agent_service_pb2_grpc,
    objects_pb2,
    worker_common_pb2,
    worker_service_pb2_grpc,
)

# The SDK's channel options, so that both accept chunks of any size.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

_Result = agent_common_pb2.Result
_Init = objects_pb2.InitKeyedDataStream
_Context = grpc.aio.ServicerContext[Any, Any]


class Kernel(Protocol):
    """Sees the payload chunk by chunk, then gives the task's one result."""

    def update(self, chunk: bytes) -> None: ...

    def result(self) -> bytes: ...


class EmptyKernel:
    def update(self, chunk: bytes) -> None:
        pass

    def result(self) -> bytes:
        return b"ok"


class StreamedCrc32:
    """Hashes each chunk as it arrives and keeps none: the least any worker can do."""

    def __init__(self) -> None:
        self._crc = 0

    def update(self, chunk: bytes) -> None:
        self._crc = zlib.crc32(chunk, self._crc)

    def result(self) -> bytes:
        return b"%08x" % self._crc


class BufferedCrc32:
    """Holds the whole payload in memory first, as a kernel given all of it needs."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def update(self, chunk: bytes) -> None:
        self._buffer += chunk

    def result(self) -> bytes:
        return b"%08x" % zlib.crc32(self._buffer)


KERNELS: dict[str, type[Kernel]] = {
    "empty": EmptyKernel,
    "crc32": StreamedCrc32,
    "crc32-buffered": BufferedCrc32,
}


def result_messages(token: str, key: str, value: bytes) -> list[_Result]:
    return [
        _Result(communication_token=token, init=_Init(key=key)),
        _Result(communication_token=token, data=objects_pb2.DataChunk(data=value)),
        _Result(
            communication_token=token, data=objects_pb2.DataChunk(data_complete=True)
        ),
        _Result(communication_token=token, init=_Init(last_result=True)),
    ]


def ok_reply(token: str) -> worker_common_pb2.ProcessReply:
    output = objects_pb2.Output(ok=objects_pb2.Empty())
    return worker_common_pb2.ProcessReply(communication_token=token, output=output)


class BareWorker(worker_service_pb2_grpc.WorkerServicer):
    def __init__(
        self,
        agent: agent_service_pb2_grpc.AgentAsyncStub,
        kernel: type[Kernel],
        calls: list[tuple[str, float, float]] | None = None,
    ) -> None:
        self._agent = agent
        self._kernel = kernel
        self._calls = calls

    async def HealthCheck(
        self, request: objects_pb2.Empty, context: _Context
    ) -> worker_common_pb2.HealthCheckReply:
        serving = worker_common_pb2.HealthCheckReply.ServingStatus.SERVING
        return worker_common_pb2.HealthCheckReply(status=serving)

    async def Process(
        self,
        request_iterator: AsyncIterator[worker_common_pb2.ProcessRequest],
        context: _Context,
    ) -> worker_common_pb2.ProcessReply:
        # Wall-clock time, comparable with the timestamps other processes record.
        entered = time.time()
        task_id, reply = await self._process(request_iterator)
        if self._calls is not None:
            self._calls.append((task_id, entered, time.time()))
        return reply

    async def _process(
        self, request_iterator: AsyncIterator[worker_common_pb2.ProcessRequest]
    ) -> tuple[str, worker_common_pb2.ProcessReply]:
        kernel = self._kernel()
        token = key = task_id = ""
        async for request in request_iterator:
            compute = request.compute
            kind = compute.WhichOneof("type")
            if kind == "init_request":
                token = request.communication_token
                task_id = compute.init_request.task_id
                key = compute.init_request.expected_output_keys[0]
                kernel.update(compute.init_request.payload.data)
            elif kind == "payload":
                kernel.update(compute.payload.data)
        messages = result_messages(token, key, kernel.result())
        reply = await self._agent.SendResult(iter(messages))
        if reply.WhichOneof("type") == "Error":
            output = objects_pb2.Output(
                error=objects_pb2.Output.Error(details=reply.Error)
            )
            return task_id, worker_common_pb2.ProcessReply(
                communication_token=token, output=output
            )
        return task_id, ok_reply(token)


def write_calls(path: Path, calls: list[tuple[str, float, float]]) -> None:
    lines = (f"{task_id}\t{entered!r}\t{left!r}\n" for task_id, entered, left in calls)
    path.write_text("".join(lines))


async def serve(
    address: str, agent_address: str, kernel: type[Kernel], calls_path: Path | None
) -> None:
    channel = grpc.aio.insecure_channel(agent_address, options=CHANNEL_OPTIONS)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    agent = agent_service_pb2_grpc.AgentStub(channel)
    calls: list[tuple[str, float, float]] = []
    worker = BareWorker(agent, kernel, None if calls_path is None else calls)
    worker_service_pb2_grpc.add_WorkerServicer_to_server(worker, server)
    server.add_insecure_port(address)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await server.start()
    try:
        await stopping.wait()
    finally:
        await server.stop(grace=1.0)
        await channel.close()
        if calls_path is not None:
            write_calls(calls_path, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="unix:PATH to listen on")
    parser.add_argument("--agent", required=True, help="unix:PATH of the agent")
    parser.add_argument("--kernel", choices=sorted(KERNELS), default="empty")
    parser.add_argument("--calls", type=Path, help="where to write the call times")
    args = parser.parse_args()
    uvloop.run(serve(args.address, args.agent, KERNELS[args.kernel], args.calls))


if __name__ == "__main__":
    main()
