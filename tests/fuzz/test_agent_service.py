"""CreateTask and SendResult streams of any shape against the agent's Agent service
over a real SQLite backend.

Each stream is answered as its grammar and the agent's limits say (OK, the reply's
in-band error, INVALID_ARGUMENT or RESOURCE_EXHAUSTED), a refused one stores no task
and no blob, a result is kept whole or not at all, and the service serves the next
request of the attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent._registry import AttemptRegistry, Running
from agent._service import AgentLimits, AgentService
from agent.backend import Backend, NewTask, open_backend
from gridpod_api import agent_common_pb2, agent_service_pb2_grpc, objects_pb2
from tests.fuzz.support import (
    Sent,
    ServerLoop,
    StateFile,
    assert_nothing_left_over,
    call_status,
    data_sizes,
    encoded,
    examples,
    parsed,
    raw_bytes,
    server_loop,
    short_tempdir,
    streams,
)
from worker_sdk import Address
from worker_sdk._agent import CHANNEL_OPTIONS
from worker_sdk._listen import listen, new_server

_CreateRequest = agent_common_pb2.CreateTaskRequest
_CreateReply = agent_common_pb2.CreateTaskReply
_Result = agent_common_pb2.Result
_ResultReply = agent_common_pb2.ResultReply
_Chunk = objects_pb2.DataChunk
_Header = objects_pb2.TaskRequestHeader
_InitTask = objects_pb2.InitTaskRequest
_InitKey = objects_pb2.InitKeyedDataStream
_CREATE_TASK = "/armonik.api.grpc.v1.agent.Agent/CreateTask"
_SEND_RESULT = "/armonik.api.grpc.v1.agent.Agent/SendResult"

# Stands for the running attempt's token in the messages drawn; replaced when sent.
GOOD = "<the attempt's token>"
TOKENS = st.sampled_from([GOOD, GOOD, GOOD, "", "a-stale-token"])
OWN_OUTPUTS = ("out-a", "out-b")
LIMITS = AgentLimits(
    max_payload_size=700_000,
    max_result_size=1_500_000,
    max_tasks_per_request=3,
    max_data_dependencies=2,
    max_expected_outputs=2,
)
LEASE = timedelta(seconds=60)

Outcome = Literal["invalid", "exhausted", "in-band", "answered"]
_CODES: dict[Outcome, grpc.StatusCode] = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "in-band": grpc.StatusCode.OK,
    "answered": grpc.StatusCode.OK,
}


@dataclass
class Agent:
    loop: ServerLoop
    backend: Backend
    registry: AttemptRegistry
    channel: grpc.Channel
    state: StateFile

    def stream(
        self, method: str, messages: Sequence[Sent], token: str
    ) -> tuple[grpc.StatusCode, bytes | None]:
        call: grpc.StreamUnaryMultiCallable[bytes, bytes] = self.channel.stream_unary(
            method, request_serializer=None, response_deserializer=None
        )
        code, reply, _ = call_status(
            lambda: call(encoded(_with_token(m, token)) for m in messages)
        )
        return code, reply

    def begin(self) -> Running:
        """A fresh session, and a task of it running on this agent."""
        return self.loop.run(self._begin())

    async def _begin(self) -> Running:
        backend = self.backend
        session = await backend.create_session(objects_pb2.TaskOptions(), [])
        payload = await backend.write_blob(_single(b"parent"))
        await backend.submit_tasks(session.session_id, [NewTask(payload, OWN_OUTPUTS)])
        attempt = await backend.acquire("fuzzing-agent", "", LEASE)
        assert attempt is not None
        await backend.start(attempt)
        return self.registry.add(attempt)

    def end(self, running: Running) -> None:
        """End the attempt as the task loop does: its token, then its task."""

        async def end() -> None:
            self.registry.remove(running.attempt)
            await self.backend.fail(running.attempt, "the fuzzed attempt ends")

        self.loop.run(end())


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _with_token(message: Sent, token: str) -> Sent:
    if not isinstance(message, (_CreateRequest, _Result)):
        return message
    if message.communication_token != GOOD:
        return message
    copy = type(message)()
    copy.CopyFrom(message)  # type: ignore[arg-type]
    copy.communication_token = token
    return copy


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with short_tempdir() as folder, server_loop() as loop:
        path = folder / "state.db"
        backend = loop.call(lambda: open_backend(f"sqlite://{path}"))
        registry = AttemptRegistry()
        address = Address("unix", str(folder / "agent.sock"))
        server = loop.call(lambda: _server(backend, registry))
        loop.run(listen(server, address))
        channel = grpc.insecure_channel(address.grpc_target, options=CHANNEL_OPTIONS)
        state = StateFile(path)
        try:
            yield Agent(loop, backend, registry, channel, state)
        finally:
            state.close()
            channel.close()
            loop.run(server.stop(0))
            loop.run(backend.close())


def _server(backend: Backend, registry: AttemptRegistry) -> grpc.aio.Server:
    server = new_server(CHANNEL_OPTIONS)
    service = AgentService(backend, registry, 64 * 1024, LIMITS)
    agent_service_pb2_grpc.add_AgentServicer_to_server(service, server)
    return server


class _Broken(Exception):
    """The service must refuse the stream here, with this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Reading:
    """Reads a stream as the service does: every message of the first one's token."""

    def __init__(
        self, messages: Sequence[Sent], kind: type[_CreateRequest | _Result]
    ) -> None:
        self._messages = iter(messages)
        self._kind = kind
        self.token: str | None = None

    def next(self, *, may_end: bool = False) -> _CreateRequest | _Result | None:
        message = next(self._messages, None)
        if message is None:
            if may_end:
                return None
            raise _Broken("invalid")
        request = parsed(message, self._kind)
        if request is None:
            raise _Broken("invalid")
        if self.token is None:
            self.token = request.communication_token
        elif request.communication_token != self.token:
            raise _Broken("invalid")
        return request


def _data_of(reading: _Reading, field: str, limit: int) -> bytes:
    """The chunks of ``field`` messages up to data_complete, as the service takes
    them."""
    data = b""
    while True:
        message = reading.next()
        assert message is not None
        if message.WhichOneof("type") != field:
            raise _Broken("invalid")
        chunk = getattr(message, field)
        if chunk.WhichOneof("type") == "data":
            data += chunk.data
            if len(data) > limit:
                raise _Broken("exhausted")
        elif chunk.data_complete:
            return data
        else:
            raise _Broken("invalid")


# -- CreateTask ---------------------------------------------------------------------


def _create(token: str = GOOD, **fields: object) -> _CreateRequest:
    return _CreateRequest(communication_token=token, **fields)  # type: ignore[arg-type]


def _options(kind: str) -> objects_pb2.TaskOptions:
    options = objects_pb2.TaskOptions(max_retries=-1 if kind == "negative" else 1)
    if kind == "endless":
        options.max_duration.seconds = 10**15
    elif kind == "timed":
        options.max_duration.FromTimedelta(timedelta(minutes=1))
    return options


_create_vocabulary: st.SearchStrategy[Sent] = st.one_of(
    st.builds(
        lambda token, kind: _create(
            token,
            init_request=_CreateRequest.InitRequest(task_options=_options(kind)),
        ),
        TOKENS,
        st.sampled_from(["plain", "timed", "negative", "endless"]),
    ),
    st.builds(
        lambda outputs, dependencies: _create(
            init_task=_InitTask(
                header=_Header(
                    expected_output_keys=outputs, data_dependencies=dependencies
                )
            )
        ),
        st.lists(st.sampled_from([*OWN_OUTPUTS, "new-1", "new-2"]), max_size=3),
        st.lists(st.sampled_from(["out-a", "new-1", "missing"]), max_size=3),
    ),
    data_sizes(0, 1, 1000, 300_000).map(
        lambda data: _create(task_payload=_Chunk(data=data))
    ),
    st.booleans().map(lambda done: _create(task_payload=_Chunk(data_complete=done))),
    st.just(_create(task_payload=_Chunk())),
    st.booleans().map(lambda last: _create(init_task=_InitTask(last_task=last))),
    st.just(_create(init_task=_InitTask())),
    st.builds(_create, TOKENS),
    raw_bytes(),
)


@st.composite
def _well_formed_creations(draw: st.DrawFn) -> list[Sent]:
    """Streams that follow the grammar: some past one of the limits, some with a
    task that the backend refuses."""
    past = draw(
        st.sampled_from(["none", "none", "refused", "tasks", "keys", "payload"])
    )
    messages: list[Sent] = [
        _create(init_request=_CreateRequest.InitRequest(task_options=_options("timed")))
    ]
    tasks = LIMITS.max_tasks_per_request + (past == "tasks")
    for index in range(draw(st.integers(1, tasks))):
        outputs = [f"new-{index}-{n}" for n in range(draw(st.integers(1, 2)))]
        dependencies = ["out-a"] * draw(st.integers(0, 1))
        if past == "refused" and draw(st.booleans()):
            dependencies = ["an-unknown-result"]
        if past == "keys":
            outputs *= 3
        header = _Header(expected_output_keys=outputs, data_dependencies=dependencies)
        messages.append(_create(init_task=_InitTask(header=header)))
        sizes = data_sizes(0, 10, 1000, 300_000 if past == "payload" else 100)
        for chunk in draw(st.lists(sizes, max_size=4)):
            messages.append(_create(task_payload=_Chunk(data=chunk)))
        messages.append(_create(task_payload=_Chunk(data_complete=True)))
    messages.append(_create(init_task=_InitTask(last_task=True)))
    return messages


def _options_refused(options: objects_pb2.TaskOptions) -> bool:
    return options.max_retries < 0 or options.max_duration.seconds > 10**12


def _check_task(index: int, header: _Header) -> None:
    if index >= LIMITS.max_tasks_per_request:
        raise _Broken("exhausted")
    if len(header.expected_output_keys) > LIMITS.max_expected_outputs:
        raise _Broken("exhausted")
    if len(header.data_dependencies) > LIMITS.max_data_dependencies:
        raise _Broken("exhausted")


def creation_outcome(messages: Sequence[Sent]) -> tuple[Outcome, int]:
    """How the service must answer, and for how many tasks when it answers."""
    try:
        return _read_creation(_Reading(messages, _CreateRequest))
    except _Broken as broken:
        return broken.outcome, 0


def _read_creation(reading: _Reading) -> tuple[Outcome, int]:
    first = reading.next()
    assert isinstance(first, _CreateRequest)
    if first.WhichOneof("type") != "init_request":
        raise _Broken("invalid")
    if first.communication_token != GOOD or _options_refused(
        first.init_request.task_options
    ):
        return "in-band", 0
    tasks = 0
    while True:
        message = reading.next()
        assert isinstance(message, _CreateRequest)
        if message.WhichOneof("type") != "init_task":
            raise _Broken("invalid")
        init = message.init_task
        if init.WhichOneof("type") == "header":
            _check_task(tasks, init.header)
            _data_of(reading, "task_payload", LIMITS.max_payload_size)
            tasks += 1
        elif init.last_task and tasks:
            return "answered", tasks
        else:
            raise _Broken("invalid")


def _check_creation(agent: Agent, running: Running, messages: Sequence[Sent]) -> None:
    task_id = running.attempt.task.task_id
    before = agent.state.tasks_staged_by(task_id)
    code, raw = agent.stream(_CREATE_TASK, messages, running.attempt.token)
    outcome, tasks = creation_outcome(messages)
    assert code == _CODES[outcome], (code, outcome)
    created = 0
    if code == grpc.StatusCode.OK:
        assert raw is not None
        reply = _CreateReply.FromString(raw)
        if outcome == "in-band":
            assert reply.WhichOneof("Response") == "error", reply
        else:
            assert reply.WhichOneof("Response") == "creation_status_list", reply
            statuses = reply.creation_status_list.creation_statuses
            assert len(statuses) == tasks
            created = sum(s.WhichOneof("Status") == "task_info" for s in statuses)
    assert agent.state.tasks_staged_by(task_id) == before + created
    assert_nothing_left_over(agent.state.stored())


def _good_creation(key: str) -> list[Sent]:
    return [
        _create(init_request=_CreateRequest.InitRequest()),
        _create(init_task=_InitTask(header=_Header(expected_output_keys=[key]))),
        _create(task_payload=_Chunk(data=b"subtask")),
        _create(task_payload=_Chunk(data_complete=True)),
        _create(init_task=_InitTask(last_task=True)),
    ]


# A message that does not parse in the payload of a second task: the first one's
# payload is deleted before the refusal goes out.
_UNPARSABLE_SECOND_PAYLOAD: list[Sent] = [
    _create(init_request=_CreateRequest.InitRequest()),
    _create(init_task=_InitTask(header=_Header(expected_output_keys=["new-0"]))),
    _create(task_payload=_Chunk(data_complete=True)),
    _create(init_task=_InitTask(header=_Header(expected_output_keys=["new-1"]))),
    _create(task_payload=_Chunk(data=b"")),
    b"\x00",
    _create(task_payload=_Chunk(data_complete=True)),
    _create(init_task=_InitTask(last_task=True)),
]


@examples(100)
@given(messages=streams(_well_formed_creations(), _create_vocabulary))
@example(messages=_UNPARSABLE_SECOND_PAYLOAD)
def test_create_task_streams(agent: Agent, messages: list[Sent]) -> None:
    running = agent.begin()
    try:
        _check_creation(agent, running, messages)
        _check_creation(agent, running, _good_creation("after-the-fuzz"))
    finally:
        agent.end(running)
    assert agent.state.tasks_staged_by(running.attempt.task.task_id) == 0
    assert_nothing_left_over(agent.state.stored())


# -- SendResult ---------------------------------------------------------------------


def _result(token: str = GOOD, **fields: object) -> _Result:
    return _Result(communication_token=token, **fields)  # type: ignore[arg-type]


_result_keys = st.sampled_from([*OWN_OUTPUTS, "new-1", ""])
_result_vocabulary: st.SearchStrategy[Sent] = st.one_of(
    st.builds(
        lambda token, key: _result(token, init=_InitKey(key=key)), TOKENS, _result_keys
    ),
    st.booleans().map(lambda last: _result(init=_InitKey(last_result=last))),
    st.just(_result(init=_InitKey())),
    data_sizes(0, 1, 1000, 400_000).map(lambda data: _result(data=_Chunk(data=data))),
    st.booleans().map(lambda done: _result(data=_Chunk(data_complete=done))),
    st.just(_result(data=_Chunk())),
    st.builds(_result, TOKENS),
    raw_bytes(),
)


# Chunks of a small result, of one staged in the backend, and of one past the limit.
_RESULT_CHUNKS = {
    "small": st.lists(data_sizes(0, 10, 1000), max_size=3),
    "staged": st.lists(st.just(b"s" * 400_000), min_size=3, max_size=3),
    "past": st.lists(st.just(b"p" * 400_000), min_size=4, max_size=4),
}


@st.composite
def _well_formed_results(draw: st.DrawFn) -> list[Sent]:
    """Streams that follow the grammar, some of their results past the limit."""
    messages: list[Sent] = []
    for key in draw(st.lists(st.sampled_from(OWN_OUTPUTS), min_size=1, max_size=3)):
        messages.append(_result(init=_InitKey(key=key)))
        size = draw(st.sampled_from(["small", "small", "staged", "past"]))
        for chunk in draw(_RESULT_CHUNKS[size]):
            messages.append(_result(data=_Chunk(data=chunk)))
        messages.append(_result(data=_Chunk(data_complete=True)))
    if draw(st.booleans()):
        messages.append(_result(init=_InitKey(last_result=True)))
    return messages


@dataclass
class _Sending:
    """What a SendResult stream must do: its outcome, and the results it keeps."""

    outcome: Outcome = "answered"
    kept: dict[str, bytes] = field(default_factory=dict)


def sending(messages: Sequence[Sent]) -> _Sending:
    reading = _Reading(messages, _Result)
    result = _Sending()
    try:
        message = reading.next()
        assert message is not None
        if message.communication_token != GOOD:
            result.outcome = "in-band"
            return result
        while message is not None:
            assert isinstance(message, _Result)
            if message.WhichOneof("type") != "init":
                raise _Broken("invalid")
            init = message.init
            if init.WhichOneof("type") == "last_result" and not init.last_result:
                raise _Broken("invalid")
            if init.WhichOneof("type") != "key":
                return result
            if init.key not in OWN_OUTPUTS:
                result.outcome = "in-band"
                return result
            result.kept[init.key] = _data_of(reading, "data", LIMITS.max_result_size)
            message = reading.next(may_end=True)
    except _Broken as broken:
        result.outcome = broken.outcome
    return result


def _values(agent: Agent, running: Running) -> dict[str, bytes]:
    """What the attempt would commit: results held in memory over those staged."""
    staged = agent.state.staged_values(running.attempt.task.task_id)
    return {**staged, **agent.loop.call(lambda: dict(running.results))}


def _check_sending(
    agent: Agent,
    running: Running,
    messages: Sequence[Sent],
    values: dict[str, bytes],
) -> None:
    code, raw = agent.stream(_SEND_RESULT, messages, running.attempt.token)
    expected = sending(messages)
    assert code == _CODES[expected.outcome], (code, expected.outcome)
    if code == grpc.StatusCode.OK:
        assert raw is not None
        reply = _ResultReply.FromString(raw)
        answer = "Error" if expected.outcome == "in-band" else "Ok"
        assert reply.WhichOneof("type") == answer, reply
    values.update(expected.kept)
    assert _values(agent, running) == values
    assert_nothing_left_over(agent.state.stored())


# A message that does not parse in a result being written to the backend: the
# blob is dropped before the refusal goes out.
_UNPARSABLE_LARGE_RESULT: list[Sent] = [
    _result(init=_InitKey(key="out-a")),
    *[_result(data=_Chunk(data=b"p" * 400_000)) for _ in range(3)],
    b"\x00",
    _result(data=_Chunk(data_complete=True)),
]


@examples(100)
@given(messages=streams(_well_formed_results(), _result_vocabulary))
@example(messages=_UNPARSABLE_LARGE_RESULT)
def test_send_result_streams(agent: Agent, messages: list[Sent]) -> None:
    running = agent.begin()
    values: dict[str, bytes] = {}
    try:
        _check_sending(agent, running, messages, values)
        good = [
            _result(init=_InitKey(key="out-b")),
            _result(data=_Chunk(data=b"after the fuzz")),
            _result(data=_Chunk(data_complete=True)),
            _result(init=_InitKey(last_result=True)),
        ]
        _check_sending(agent, running, good, values)
    finally:
        agent.end(running)
    assert_nothing_left_over(agent.state.stored())


def test_a_result_refused_midway_keeps_the_value_sent_before(agent: Agent) -> None:
    running = agent.begin()
    values: dict[str, bytes] = {}
    small = [
        _result(init=_InitKey(key="out-a")),
        _result(data=_Chunk(data=b"first")),
        _result(data=_Chunk(data_complete=True)),
    ]
    large = [_result(init=_InitKey(key="out-a"))] + [
        _result(data=_Chunk(data=b"x" * 400_000)) for _ in range(4)
    ]
    try:
        _check_sending(agent, running, small, values)
        _check_sending(agent, running, large, values)
        assert values == {"out-a": b"first"}
    finally:
        agent.end(running)
