"""Submitter.CreateLargeTasks streams of any shape against the control plane over a
real SQLite backend.

Each stream is answered as its grammar, its session and the control plane's limits
say; a refused one creates no task and no result and leaves no payload behind, an
answered one creates exactly the tasks it reports; and the next stream is served.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent._chunks import single
from agent.backend import Backend, NewTask, ResultQuery, TaskQuery
from agent.control import ControlPlaneConfig
from gridpod_api import objects_pb2, submitter_common_pb2
from tests.fuzz.support import (
    Plane,
    Sent,
    assert_nothing_left_over,
    call_status,
    data_sizes,
    encoded,
    examples,
    parsed,
    raw_bytes,
    serving_control_plane,
    streams,
)

_Request = submitter_common_pb2.CreateLargeTaskRequest
_Reply = submitter_common_pb2.CreateTaskReply
_Chunk = objects_pb2.DataChunk
_Header = objects_pb2.TaskRequestHeader
_InitTask = objects_pb2.InitTaskRequest
_CREATE_LARGE_TASKS = "/armonik.api.grpc.v1.submitter.Submitter/CreateLargeTasks"

# Stand for the example's own session and a cancelled one; replaced when sent.
RUNNING = "<the example's session>"
CANCELLED = "<a cancelled session>"
CONFIG = ControlPlaneConfig(
    max_payload_size=700_000,
    max_tasks_per_request=3,
    max_data_dependencies=2,
    max_expected_outputs=2,
    max_streams_per_client=4,
)
_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "not found": grpc.StatusCode.NOT_FOUND,
    "cancelled": grpc.StatusCode.FAILED_PRECONDITION,
    "answered": grpc.StatusCode.OK,
}


def _create(
    plane: Plane, messages: Sequence[Sent], session_id: str
) -> tuple[grpc.StatusCode, _Reply | None, str]:
    call: grpc.StreamUnaryMultiCallable[bytes, _Reply] = plane.channel.stream_unary(
        _CREATE_LARGE_TASKS,
        request_serializer=None,
        response_deserializer=_Reply.FromString,
    )
    names = {RUNNING: session_id, CANCELLED: plane.cancelled}
    return call_status(lambda: call(encoded(_named(m, names)) for m in messages))


def _named(message: Sent, names: dict[str, str]) -> Sent:
    if not isinstance(message, _Request) or not message.HasField("init_request"):
        return message
    session_id = message.init_request.session_id
    if session_id not in names:
        return message
    copy = _Request()
    copy.CopyFrom(message)
    copy.init_request.session_id = names[session_id]
    return copy


async def _session(backend: Backend) -> str:
    """A fresh session, holding one result: ``existing``."""
    session = await backend.create_session(objects_pb2.TaskOptions(), [])
    payload = await backend.write_blob(single(b"payload"))
    await backend.submit_tasks(session.session_id, [NewTask(payload, ["existing"])])
    return session.session_id


def _created(plane: Plane, session_id: str) -> tuple[int, int]:
    """The session's tasks and results, as the backend lists them."""

    async def count() -> tuple[int, int]:
        backend = plane.backend
        tasks = await backend.count_tasks(TaskQuery(session_ids=[session_id]))
        results = await backend.list_results(
            ResultQuery(session_ids=[session_id], limit=0)
        )
        return sum(tasks.values()), results.total

    return plane.loop.run(count())


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    with serving_control_plane(CONFIG) as served:
        yield served


# -- streams ------------------------------------------------------------------------


def _options(kind: str) -> objects_pb2.TaskOptions | None:
    if kind == "none":
        return None
    options = objects_pb2.TaskOptions(max_retries=-1 if kind == "negative" else 2)
    if kind == "endless":
        options.max_duration.seconds = 10**15
    return options


def _init(session_id: str, options: str = "none") -> _Request:
    return _Request(
        init_request=_Request.InitRequest(
            session_id=session_id, task_options=_options(options)
        )
    )


def _task(outputs: list[str], dependencies: list[str]) -> _Request:
    header = _Header(expected_output_keys=outputs, data_dependencies=dependencies)
    return _Request(init_task=_InitTask(header=header))


def _payload(chunk: _Chunk) -> _Request:
    return _Request(task_payload=chunk)


_LAST_TASK = _Request(init_task=_InitTask(last_task=True))

_vocabulary: st.SearchStrategy[Sent] = st.one_of(
    st.builds(
        _init,
        st.sampled_from([RUNNING, RUNNING, CANCELLED, "no-such-session", ""]),
        st.sampled_from(["none", "plain", "negative", "endless"]),
    ),
    st.builds(
        _task,
        st.lists(st.sampled_from(["k0", "k1", "existing", ""]), max_size=3),
        st.lists(st.sampled_from(["existing", "k0", "missing"]), max_size=3),
    ),
    st.booleans().map(lambda last: _Request(init_task=_InitTask(last_task=last))),
    st.just(_Request(init_task=_InitTask())),
    data_sizes(0, 1, 1000, 300_000).map(lambda data: _payload(_Chunk(data=data))),
    st.booleans().map(lambda done: _payload(_Chunk(data_complete=done))),
    st.just(_payload(_Chunk())),
    st.just(_Request()),
    raw_bytes(),
)


@st.composite
def _well_formed(draw: st.DrawFn) -> list[Sent]:
    """Streams that follow the grammar: some for a session that takes no tasks,
    some past one of the limits, some with a task that the backend refuses."""
    shape = draw(st.sampled_from(["fine", "fine", "refused", "tasks", "keys", "big"]))
    session = draw(st.sampled_from([RUNNING] * 4 + [CANCELLED, "no-such-session"]))
    messages: list[Sent] = [_init(session, draw(st.sampled_from(["none", "plain"])))]
    tasks = CONFIG.max_tasks_per_request + (shape == "tasks")
    for index in range(draw(st.integers(1, tasks))):
        outputs = [f"t{index}-{n}" for n in range(draw(st.integers(1, 2)))]
        dependencies = draw(st.sampled_from([[], ["existing"], ["t0-0"]]))
        if shape == "refused" and draw(st.booleans()):
            outputs = ["existing"]
        if shape == "keys":
            dependencies = ["existing"] * (CONFIG.max_data_dependencies + 1)
        messages.append(_task(outputs, dependencies))
        sizes = data_sizes(0, 10, 1000, 300_000 if shape == "big" else 100)
        for chunk in draw(st.lists(sizes, max_size=4)):
            messages.append(_payload(_Chunk(data=chunk)))
        messages.append(_payload(_Chunk(data_complete=True)))
    messages.append(_LAST_TASK)
    return messages


# -- what the control plane must answer ---------------------------------------------


class _Broken(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Reading:
    def __init__(self, messages: Sequence[Sent]) -> None:
        self._messages = iter(messages)

    def next(self) -> _Request:
        message = next(self._messages, None)
        request = None if message is None else parsed(message, _Request)
        if request is None:
            raise _Broken("invalid")
        return request

    def ended(self) -> bool:
        return next(self._messages, None) is None


def _options_refused(options: objects_pb2.TaskOptions) -> bool:
    return options.max_retries < 0 or options.max_duration.seconds > 10**12


def _read_init(reading: _Reading) -> None:
    first = reading.next()
    if first.WhichOneof("type") != "init_request":
        raise _Broken("invalid")
    init = first.init_request
    if not init.session_id:
        raise _Broken("invalid")
    if init.HasField("task_options") and _options_refused(init.task_options):
        raise _Broken("invalid")
    if init.session_id == CANCELLED:
        raise _Broken("cancelled")
    if init.session_id != RUNNING:
        raise _Broken("not found")


def _read_payload(reading: _Reading) -> None:
    size = 0
    while True:
        message = reading.next()
        kind = message.WhichOneof("type")
        chunk = message.task_payload
        if kind != "task_payload" or chunk.WhichOneof("type") is None:
            raise _Broken("invalid")
        if chunk.WhichOneof("type") == "data":
            size += len(chunk.data)
            if size > CONFIG.max_payload_size:
                raise _Broken("exhausted")
        elif chunk.data_complete:
            return
        else:
            raise _Broken("invalid")


def _check_header(index: int, header: _Header) -> None:
    if index >= CONFIG.max_tasks_per_request:
        raise _Broken("exhausted")
    if len(header.expected_output_keys) > CONFIG.max_expected_outputs:
        raise _Broken("exhausted")
    if len(header.data_dependencies) > CONFIG.max_data_dependencies:
        raise _Broken("exhausted")


def outcome(messages: Sequence[Sent]) -> tuple[str, int]:
    """How the control plane must answer, and for how many tasks if it answers."""
    reading = _Reading(messages)
    try:
        _read_init(reading)
        tasks = 0
        while True:
            message = reading.next()
            init = message.init_task
            kind = init.WhichOneof("type")
            if message.WhichOneof("type") != "init_task" or kind is None:
                raise _Broken("invalid")
            if kind == "header":
                _check_header(tasks, init.header)
                _read_payload(reading)
                tasks += 1
            elif init.last_task and tasks and reading.ended():
                return "answered", tasks
            else:
                raise _Broken("invalid")
    except _Broken as broken:
        return broken.outcome, 0


# -- the tests ----------------------------------------------------------------------


def _check_stream(plane: Plane, session_id: str, messages: Sequence[Sent]) -> None:
    tasks_before, results_before = _created(plane, session_id)
    code, reply, details = _create(plane, messages, session_id)
    expected, count = outcome(messages)
    assert code == _CODES[expected], (code, expected, details)
    created_tasks = created_results = 0
    if reply is not None:
        statuses = reply.creation_status_list.creation_statuses
        assert len(statuses) == count, reply
        for status in statuses:
            if status.WhichOneof("Status") == "task_info":
                created_tasks += 1
                created_results += len(status.task_info.expected_output_keys)
    tasks, results = _created(plane, session_id)
    assert (tasks, results) == (
        tasks_before + created_tasks,
        results_before + created_results,
    )
    assert_nothing_left_over(plane.state.stored())


@examples(120)
@given(messages=streams(_well_formed(), _vocabulary))
def test_any_stream_gets_a_clear_answer(plane: Plane, messages: list[Sent]) -> None:
    session_id = plane.loop.run(_session(plane.backend))
    _check_stream(plane, session_id, messages)
    good = [_init(RUNNING), _task(["after"], []), _payload(_Chunk(data=b"p"))]
    done = [_payload(_Chunk(data_complete=True)), _LAST_TASK]
    _check_stream(plane, session_id, [*good, *done])
