"""The floor of a client's calls to a control plane: a bare grpc.aio Submitter that
answers CreateSmallTasks and TryGetResultStream at once, with no backend behind it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

# Before grpc, so that this process runs gRPC with our processes' settings.
import worker_sdk._grpc_defaults  # noqa: F401  # isort: skip
import grpc

from bench._common import CHANNEL_OPTIONS
from gridpod_api import (
    objects_pb2,
    submitter_common_pb2,
    submitter_service_pb2_grpc,
)

__all__ = ["BareSubmitter", "bare_call_latencies"]

_Common = submitter_common_pb2
_Reply = _Common.CreateTaskReply
_Context = grpc.aio.ServicerContext[Any, Any]

_VALUE = b"ok"


class BareSubmitter(submitter_service_pb2_grpc.SubmitterServicer):
    """The two calls of a client's one-task round trip, answered at once."""

    async def CreateSmallTasks(
        self, request: _Common.CreateSmallTaskRequest, context: _Context
    ) -> _Reply:
        statuses = [
            _Reply.CreationStatus(
                task_info=_Reply.TaskInfo(
                    task_id=f"task-{index}",
                    expected_output_keys=task.expected_output_keys,
                    data_dependencies=task.data_dependencies,
                )
            )
            for index, task in enumerate(request.task_requests)
        ]
        return _Reply(
            creation_status_list=_Reply.CreationStatusList(creation_statuses=statuses)
        )

    async def TryGetResultStream(
        self, request: objects_pb2.ResultRequest, context: _Context
    ) -> AsyncIterator[_Common.ResultReply]:
        yield _Common.ResultReply(result=objects_pb2.DataChunk(data=_VALUE))
        yield _Common.ResultReply(result=objects_pb2.DataChunk(data_complete=True))


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    # Its other methods answer UNIMPLEMENTED, as the generated servicer's do.
    servicer = BareSubmitter()  # type: ignore[abstract]
    submitter_service_pb2_grpc.add_SubmitterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


def _one_task(session_id: str) -> _Common.CreateSmallTaskRequest:
    task = objects_pb2.TaskRequest(expected_output_keys=["out"], payload=b"")
    return _Common.CreateSmallTaskRequest(session_id=session_id, task_requests=[task])


async def bare_call_latencies(
    samples: int, warm_up: int = 50
) -> dict[str, list[float]]:
    """Seconds of each call, one at a time: ``submit`` (CreateSmallTasks with one
    task) and ``result`` (TryGetResultStream read to its end)."""
    spans: dict[str, list[float]] = {"submit": [], "result": []}
    async with _served() as channel:
        stub = submitter_service_pb2_grpc.SubmitterStub(channel)
        request = _one_task("session")
        read = objects_pb2.ResultRequest(session="session", result_id="out")
        for number in range(warm_up + samples):
            started = time.perf_counter()
            await stub.CreateSmallTasks(request)
            submitted = time.perf_counter()
            replies = [reply async for reply in stub.TryGetResultStream(read)]
            ended = time.perf_counter()
            if replies[0].result.data != _VALUE:
                raise AssertionError(f"the bare submitter answered {replies[0]}")
            if number >= warm_up:
                spans["submit"].append(submitted - started)
                spans["result"].append(ended - submitted)
    return spans
