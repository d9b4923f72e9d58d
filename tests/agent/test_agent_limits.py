"""The Agent service's limits: a CreateTask or SendResult stream past one is refused
with RESOURCE_EXHAUSTED naming the limit and its value, and stores nothing; and
options that no agent could run a subtask with are refused in-band."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from agent._registry import AttemptRegistry, Running
from agent._service import AgentLimits, AgentService
from agent.backend import Backend, NewTask, open_backend
from gridpod_api import agent_common_pb2, agent_service_pb2_grpc, objects_pb2
from tests.fuzz.support import StateFile, assert_nothing_left_over
from worker_sdk import Address
from worker_sdk._agent import CHANNEL_OPTIONS, create_task_messages, result_messages
from worker_sdk._listen import listen, new_server
from worker_sdk._model import TaskDefinition, TaskOptions

LIMITS = AgentLimits(
    max_payload_size=100,
    max_result_size=50,
    max_tasks_per_request=2,
    max_data_dependencies=1,
    max_expected_outputs=2,
)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_M = TypeVar("_M")


@dataclass
class Served:
    backend: Backend
    stub: agent_service_pb2_grpc.AgentAsyncStub
    running: Running
    state: StateFile

    @property
    def token(self) -> str:
        return self.running.attempt.token

    def staged_tasks(self) -> int:
        return self.state.tasks_staged_by(self.running.attempt.task.task_id)


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _messages(messages: Sequence[_M]) -> AsyncIterator[_M]:
    for message in messages:
        yield message


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    folder = Path(tempfile.mkdtemp(prefix="gridpod-", dir="/tmp"))
    backend = open_backend(f"sqlite://{folder / 'state.db'}")
    registry = AttemptRegistry()
    server = new_server(CHANNEL_OPTIONS)
    service = AgentService(backend, registry, 1024, LIMITS)
    agent_service_pb2_grpc.add_AgentServicer_to_server(service, server)
    address = Address("unix", str(folder / "agent.sock"))
    await listen(server, address)
    channel = grpc.aio.insecure_channel(address.grpc_target)
    session = await backend.create_session(objects_pb2.TaskOptions(), [])
    payload = await backend.write_blob(_single(b"parent"))
    await backend.submit_tasks(session.session_id, [NewTask(payload, ["out"])])
    attempt = await backend.acquire("agent", "", timedelta(seconds=60))
    assert attempt is not None
    await backend.start(attempt)
    state = StateFile(folder / "state.db")
    try:
        yield Served(
            backend,
            agent_service_pb2_grpc.AgentStub(channel),
            registry.add(attempt),
            state,
        )
    finally:
        state.close()
        await channel.close()
        await server.stop(0)
        await backend.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _create(
    served: Served,
    definitions: Sequence[TaskDefinition],
    options: TaskOptions | None = None,
) -> agent_common_pb2.CreateTaskReply:
    messages = create_task_messages(served.token, definitions, options, 40)
    reply: agent_common_pb2.CreateTaskReply = await served.stub.CreateTask(
        _messages(list(messages))
    )
    return reply


async def _refused(served: Served, *definitions: TaskDefinition) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _create(served, definitions)
    assert refused.value.code() == EXHAUSTED, refused.value
    assert served.staged_tasks() == 0
    assert_nothing_left_over(served.state.stored())
    return refused.value.details() or ""


def _task(
    outputs: Sequence[str], payload: bytes = b"", dependencies: Sequence[str] = ()
) -> TaskDefinition:
    return TaskDefinition(
        payload=payload, expected_outputs=outputs, data_dependencies=dependencies
    )


async def test_a_subtask_payload_past_the_limit(served: Served) -> None:
    details = await _refused(served, _task(["a"], b"x" * 100), _task(["b"], b"x" * 101))
    assert "the payload of task 1" in details
    assert "max_payload_size (100 bytes)" in details


async def test_too_many_subtasks(served: Served) -> None:
    details = await _refused(served, *(_task([f"k{n}"], b"p") for n in range(3)))
    assert "max_tasks_per_request (2)" in details


async def test_too_many_keys(served: Served) -> None:
    details = await _refused(served, _task(["a", "b", "c"]))
    assert "task 0 has 3 expected outputs" in details
    assert "max_expected_outputs (2)" in details
    details = await _refused(served, _task(["a"], dependencies=["out", "x"]))
    assert "task 0 has 2 data dependencies" in details
    assert "max_data_dependencies (1)" in details


async def test_subtasks_within_the_limits_are_staged(served: Served) -> None:
    reply = await _create(served, [_task(["a"], b"x" * 100), _task(["b", "out"])])
    statuses = reply.creation_status_list.creation_statuses
    assert [s.WhichOneof("Status") for s in statuses] == ["task_info"] * 2
    assert served.staged_tasks() == 2
    assert_nothing_left_over(served.state.stored())


async def test_refused_subtasks_leave_no_payload(served: Served) -> None:
    reply = await _create(
        served, [_task(["a"], b"kept"), _task(["b"], b"dropped", ["unknown"])]
    )
    first, second = reply.creation_status_list.creation_statuses
    assert first.WhichOneof("Status") == "task_info"
    assert "unknown" in second.error
    assert_nothing_left_over(served.state.stored())


def _negative_retries(options: objects_pb2.TaskOptions) -> None:
    options.max_retries = -1


def _endless(options: objects_pb2.TaskOptions) -> None:
    # Past what a timedelta holds, as a client in another language may send.
    options.max_duration.seconds = 10**15


@pytest.mark.parametrize(
    ("spoil", "named"),
    [(_negative_retries, "max_retries"), (_endless, "max_duration")],
)
async def test_options_no_agent_could_use_are_refused_in_band(
    served: Served, spoil: Callable[[objects_pb2.TaskOptions], None], named: str
) -> None:
    messages = list(create_task_messages(served.token, [_task(["a"])], None, 40))
    spoil(messages[0].init_request.task_options)
    reply = await served.stub.CreateTask(_messages(messages))
    assert reply.WhichOneof("Response") == "error"
    assert named in reply.error
    assert served.staged_tasks() == 0
    assert_nothing_left_over(served.state.stored())


async def test_a_result_past_the_limit_is_refused_and_not_staged(
    served: Served,
) -> None:
    messages = list(result_messages(served.token, "out", b"x" * 51, 20))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SendResult(_messages(messages))
    assert refused.value.code() == EXHAUSTED
    details = refused.value.details() or ""
    assert "result 'out' is larger than max_result_size (50 bytes)" in details
    assert served.running.results == {}
    assert served.state.staged_values(served.running.attempt.task.task_id) == {}
    assert_nothing_left_over(served.state.stored())
    accepted = list(result_messages(served.token, "out", b"x" * 50, 20))
    reply = await served.stub.SendResult(_messages(accepted))
    assert reply.WhichOneof("type") == "Ok"
    assert served.running.results == {"out": b"x" * 50}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_result_size"):
        AgentLimits(max_result_size=0)
