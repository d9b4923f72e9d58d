"""Communication tokens and the agent's socket, with an in-process agent and a worker
double that keeps the token of each task it runs.

A token is the backend's fresh secret for one attempt: the Agent service takes it
while its attempt runs and refuses it, on every RPC, once the attempt has ended.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent._config import AgentConfig
from agent._sidecar import Sidecar
from agent.backend import (
    Backend,
    NewTask,
    NotFound,
    ResultStatus,
    TaskRecord,
    TaskStatus,
    open_backend,
)
from gridpod_api import (
    agent_common_pb2,
    agent_service_pb2_grpc,
    objects_pb2,
    worker_common_pb2,
    worker_service_pb2_grpc,
)
from worker_sdk import Address
from worker_sdk._agent import CHANNEL_OPTIONS, AgentClient, create_task_messages
from worker_sdk._listen import listen, new_server
from worker_sdk._model import TaskDefinition

_Context = grpc.aio.ServicerContext[Any, Any]
_UNKNOWN = "names no running task"


@dataclass
class TokenKeeper(worker_service_pb2_grpc.WorkerServicer):
    """A worker that sends each task's output through the agent, and keeps the
    token the task came with."""

    agent: AgentClient
    tokens: list[str] = field(default_factory=list)

    async def HealthCheck(
        self, request: objects_pb2.Empty, context: _Context
    ) -> worker_common_pb2.HealthCheckReply:
        return worker_common_pb2.HealthCheckReply(
            status=worker_common_pb2.HealthCheckReply.SERVING
        )

    async def Process(
        self,
        request_iterator: AsyncIterator[worker_common_pb2.ProcessRequest],
        context: _Context,
    ) -> worker_common_pb2.ProcessReply:
        messages = [message async for message in request_iterator]
        token = messages[0].communication_token
        init = messages[0].compute.init_request
        for key in init.expected_output_keys:
            await self.agent.send_result(token, key, b"value", 1024)
        self.tokens.append(token)
        output = objects_pb2.Output(ok=objects_pb2.Empty())
        return worker_common_pb2.ProcessReply(communication_token=token, output=output)


@dataclass
class Pod:
    backend: Backend
    worker: TokenKeeper
    agent_socket: Path
    stub: agent_service_pb2_grpc.AgentAsyncStub
    session_id: str

    async def run_task(self, key: str) -> str:
        """Run one task to completion; the token its attempt had."""
        payload = await self.backend.write_blob(_single(b"payload"))
        [task] = await self.backend.submit_tasks(
            self.session_id, [NewTask(payload, [key])]
        )
        assert isinstance(task, TaskRecord), task
        for _ in range(500):
            record = await self.backend.get_task(task.task_id)
            if record.status == TaskStatus.COMPLETED:
                return self.worker.tokens[-1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"the task did not complete: {record}")


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    folder = Path(tempfile.mkdtemp(prefix="gridpod-", dir="/tmp"))
    worker_address = Address("unix", str(folder / "worker.sock"))
    agent_address = Address("unix", str(folder / "agent.sock"))
    worker_server = new_server(CHANNEL_OPTIONS)
    worker = TokenKeeper(AgentClient(agent_address.grpc_target))
    worker_service_pb2_grpc.add_WorkerServicer_to_server(worker, worker_server)
    await listen(worker_server, worker_address)
    url = f"sqlite://{folder / 'state.db'}"
    config = AgentConfig(
        backend_url=url,
        worker_address=worker_address,
        listen_address=agent_address,
        idle_poll=timedelta(milliseconds=20),
        grace_period=timedelta(seconds=1),
    )
    sidecar = Sidecar(config, open_backend(url))
    running = asyncio.create_task(sidecar.run())
    backend = open_backend(url)
    channel = grpc.aio.insecure_channel(agent_address.grpc_target)
    session = await backend.create_session(objects_pb2.TaskOptions(), [])
    try:
        yield Pod(
            backend,
            worker,
            Path(agent_address.target),
            agent_service_pb2_grpc.AgentStub(channel),
            session.session_id,
        )
    finally:
        sidecar.drain()
        await running
        await channel.close()
        await worker.agent.close()
        await worker_server.stop(0)
        await backend.close()
        shutil.rmtree(folder, ignore_errors=True)


def _result_stream(token: str, key: str) -> list[agent_common_pb2.Result]:
    Init = objects_pb2.InitKeyedDataStream
    return [
        agent_common_pb2.Result(communication_token=token, init=Init(key=key)),
        agent_common_pb2.Result(
            communication_token=token, data=objects_pb2.DataChunk(data=b"late")
        ),
        agent_common_pb2.Result(
            communication_token=token, data=objects_pb2.DataChunk(data_complete=True)
        ),
        agent_common_pb2.Result(communication_token=token, init=Init(last_result=True)),
    ]


async def _messages(messages: list[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def test_each_attempt_gets_a_fresh_unguessable_token(pod: Pod) -> None:
    first = await pod.run_task("first")
    second = await pod.run_task("second")
    assert first != second
    # secrets.token_urlsafe(32): 32 random bytes, 43 characters.
    assert len(first) >= 43 and len(second) >= 43


async def test_a_token_is_refused_on_every_rpc_once_its_attempt_ended(
    pod: Pod,
) -> None:
    token = await pod.run_task("output")
    reply = await pod.stub.SendResult(_messages(_result_stream(token, "output")))
    assert reply.WhichOneof("type") == "Error" and _UNKNOWN in reply.Error

    definition = TaskDefinition(payload=b"sub", expected_outputs=["sub"])
    created = await pod.stub.CreateTask(
        _messages(list(create_task_messages(token, [definition], None, 1024)))
    )
    assert created.WhichOneof("Response") == "error" and _UNKNOWN in created.error

    request = agent_common_pb2.DataRequest(communication_token=token, key="output")
    for rpc in (
        pod.stub.GetResourceData,
        pod.stub.GetCommonData,
        pod.stub.GetDirectData,
    ):
        replies = [reply async for reply in rpc(request)]
        assert len(replies) == 1 and _UNKNOWN in replies[0].error, replies

    # Nothing of the late calls was kept: the result holds what the attempt sent.
    result = await pod.backend.get_result(pod.session_id, "output")
    assert result.status == ResultStatus.COMPLETED
    data = b"".join(
        [c async for c in pod.backend.read_result(pod.session_id, "output")]
    )
    assert data == b"value"
    with pytest.raises(NotFound):
        await pod.backend.get_result(pod.session_id, "sub")


async def test_the_agent_socket_is_owner_only(pod: Pod) -> None:
    for _ in range(500):
        if pod.agent_socket.exists():
            break
        await asyncio.sleep(0.01)
    mode = os.stat(pod.agent_socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    # And it serves its worker all the same.
    await pod.run_task("served")
