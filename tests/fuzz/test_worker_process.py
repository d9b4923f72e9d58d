"""Worker.Process streams of any shape against the SDK's worker server: each is
answered OK or INVALID_ARGUMENT as the grammar says, leaves no spilled data open,
and the worker serves the next task."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gridpod_api import objects_pb2, worker_common_pb2
from tests.fuzz.support import (
    Sent,
    ServerLoop,
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
from worker_sdk import Address, Task, TaskHandler, WorkerConfig, WorkerServer, kernel
from worker_sdk.testing import InMemoryAgent

_Request = worker_common_pb2.ProcessRequest
_Reply = worker_common_pb2.ProcessReply
_Compute = _Request.ComputeRequest
_Chunk = objects_pb2.DataChunk
_PROCESS = "/armonik.api.grpc.v1.worker.Worker/Process"
TOKEN = "token-of-the-attempt"
# Small, so that most data dependencies spill to a file.
SPILL_THRESHOLD = 64


class Reading(TaskHandler):
    @kernel
    async def read(self, task: Task) -> None:
        # Touches every byte, spilled or not.
        bytes(task.payload)
        for data in task.data_dependencies.values():
            bytes(data)


@dataclass
class Worker:
    loop: ServerLoop
    channel: grpc.Channel
    spill_dir: Path

    def process(
        self, messages: Sequence[Sent]
    ) -> tuple[grpc.StatusCode, _Reply | None]:
        call: grpc.StreamUnaryMultiCallable[bytes, _Reply] = self.channel.stream_unary(
            _PROCESS, request_serializer=None, response_deserializer=_Reply.FromString
        )
        code, reply, _ = call_status(lambda: call(encoded(m) for m in messages))
        return code, reply

    def open_spill_files(self) -> list[str]:
        open_files = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(self.spill_dir)):
                open_files.append(target)
        return open_files


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with short_tempdir() as folder, server_loop() as loop:
        spill_dir = folder / "spill"
        spill_dir.mkdir()
        address = Address("unix", str(folder / "worker.sock"))
        config = WorkerConfig(
            address=address,
            spill_threshold=SPILL_THRESHOLD,
            spill_dir=str(spill_dir),
        )
        server = loop.call(lambda: WorkerServer(Reading(), config, InMemoryAgent()))
        loop.run(server.start())
        channel = grpc.insecure_channel(address.grpc_target)
        try:
            yield Worker(loop, channel, spill_dir)
        finally:
            channel.close()
            loop.run(server.stop())


# -- streams ------------------------------------------------------------------------


def _request(compute: _Compute, token: str = TOKEN) -> _Request:
    return _Request(communication_token=token, compute=compute)


def _init(first: _Chunk | None) -> _Request:
    init = _Compute.InitRequest(session_id="session", task_id="task")
    if first is not None:
        init.payload.CopyFrom(first)
    return _request(_Compute(init_request=init))


def _payload(chunk: _Chunk) -> _Request:
    return _request(_Compute(payload=chunk))


def _init_data(init: _Compute.InitData) -> _Request:
    return _request(_Compute(init_data=init))


def _data(chunk: _Chunk) -> _Request:
    return _request(_Compute(data=chunk))


_chunks = st.one_of(
    data_sizes(0, 1, 50, 200).map(lambda data: _Chunk(data=data)),
    st.booleans().map(lambda done: _Chunk(data_complete=done)),
    st.just(_Chunk()),
)
_keys = st.sampled_from(["curve", "rates", ""])
_init_datas = st.one_of(
    _keys.map(lambda key: _Compute.InitData(key=key)),
    st.booleans().map(lambda last: _Compute.InitData(last_data=last)),
    st.just(_Compute.InitData()),
)
_vocabulary: st.SearchStrategy[Sent] = st.one_of(
    st.one_of(st.none(), _chunks).map(_init),
    _chunks.map(_payload),
    _init_datas.map(_init_data),
    _chunks.map(_data),
    st.just(_request(_Compute())),
    st.just(_request(_Compute(payload=_Chunk(data_complete=True)), "another")),
    raw_bytes(),
)
_payload_chunks = st.lists(data_sizes(0, 1, 100, 300), max_size=3)
_dependencies = st.dictionaries(
    _keys, st.lists(data_sizes(0, 1, 100), min_size=1, max_size=3), max_size=2
)


def valid_stream(
    payload: list[bytes], inside_init: bool, dependencies: dict[str, list[bytes]]
) -> list[Sent]:
    messages: list[Sent] = []
    if inside_init and payload:
        messages.append(_init(_Chunk(data=payload[0])))
        payload = payload[1:]
    else:
        messages.append(_init(None))
    messages += [_payload(_Chunk(data=chunk)) for chunk in payload]
    messages.append(_payload(_Chunk(data_complete=True)))
    for key, chunks in dependencies.items():
        messages.append(_init_data(_Compute.InitData(key=key)))
        messages += [_data(_Chunk(data=chunk)) for chunk in chunks]
        messages.append(_data(_Chunk(data_complete=True)))
    messages.append(_init_data(_Compute.InitData(last_data=True)))
    return messages


_valid = st.builds(valid_stream, _payload_chunks, st.booleans(), _dependencies)


# -- what the worker must answer ----------------------------------------------------


class _Broken(Exception):
    pass


class _Reading:
    """Reads a stream as the grammar does, message by message."""

    def __init__(self, messages: Sequence[Sent]) -> None:
        self._messages = iter(messages)
        self._token: str | None = None

    def next(self) -> _Compute:
        message = next(self._messages, None)
        request = None if message is None else parsed(message, _Request)
        if request is None:
            raise _Broken  # the stream ended early, or the bytes do not parse
        if self._token is None:
            self._token = request.communication_token
        elif request.communication_token != self._token:
            raise _Broken
        return request.compute

    def ended(self) -> bool:
        return next(self._messages, None) is None


def _read_payload(reading: _Reading, first: _Chunk) -> None:
    if first.WhichOneof("type") == "data_complete" and first.data_complete:
        return
    while True:
        compute = reading.next()
        if compute.WhichOneof("type") != "payload":
            raise _Broken
        kind = compute.payload.WhichOneof("type")
        if kind == "data_complete" and compute.payload.data_complete:
            return
        if kind != "data":
            raise _Broken


def _read_dependency(reading: _Reading) -> None:
    chunks = 0
    while True:
        compute = reading.next()
        if compute.WhichOneof("type") != "data":
            raise _Broken
        kind = compute.data.WhichOneof("type")
        if kind == "data":
            chunks += 1
        elif kind == "data_complete" and compute.data.data_complete and chunks:
            return
        else:
            raise _Broken


def accepted(messages: Sequence[Sent]) -> bool:
    """Whether the stream follows the grammar of Worker.Process."""
    reading = _Reading(messages)
    try:
        first = reading.next()
        if first.WhichOneof("type") != "init_request":
            return False
        _read_payload(reading, first.init_request.payload)
        keys: set[str] = set()
        while True:
            init = reading.next()
            if init.WhichOneof("type") != "init_data":
                return False
            kind = init.init_data.WhichOneof("type")
            if kind == "last_data" and init.init_data.last_data:
                return reading.ended()
            if kind != "key" or init.init_data.key in keys:
                return False
            keys.add(init.init_data.key)
            _read_dependency(reading)
    except _Broken:
        return False


# -- the tests ----------------------------------------------------------------------


def _check_served(worker: Worker, messages: Sequence[Sent]) -> None:
    code, reply = worker.process(messages)
    if accepted(messages):
        assert code == grpc.StatusCode.OK, code
        assert reply is not None and reply.output.WhichOneof("type") == "ok", reply
        assert reply.communication_token == TOKEN
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, code
    assert worker.open_spill_files() == []


# A message that does not parse while a data dependency spills: the spill file
# is closed before the refusal goes out.
_UNPARSABLE_WHILE_SPILLING: list[Sent] = [
    _init(None),
    _payload(_Chunk(data_complete=True)),
    _init_data(_Compute.InitData(key="curve")),
    _data(_Chunk(data=bytes(100))),
    b"\x00\x00",
    _data(_Chunk(data_complete=True)),
    _init_data(_Compute.InitData(last_data=True)),
]


@examples(200)
@given(messages=streams(_valid, _vocabulary))
@example(messages=_UNPARSABLE_WHILE_SPILLING)
def test_any_stream_gets_a_clear_answer(worker: Worker, messages: list[Sent]) -> None:
    _check_served(worker, messages)
    # Whatever came before, the worker takes the next task.
    _check_served(worker, valid_stream([b"payload"], True, {"curve": [b"c"]}))


def test_a_valid_stream_is_accepted(worker: Worker) -> None:
    messages = valid_stream([b"a" * 100, b"b"], False, {"curve": [b"", b"c" * 200]})
    assert accepted(messages)
    _check_served(worker, messages)
