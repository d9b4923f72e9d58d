"""A scripted Agent service, a Process client and a worker subprocess, wired together.

The agent double answers as a real agent would, in-band errors included, and records
and grammar-checks every stream, so tests see both what a worker sent and how.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Generic, Literal, TypeAlias, TypeVar

import grpc

from agent._ports import free_port
from gridpod_api import (
    agent_common_pb2,
    agent_service_pb2_grpc,
    objects_pb2,
    worker_common_pb2,
    worker_service_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_CHUNK_SIZE = 84_000
# Well above gRPC's 4 MiB default, so that only the worker's own limits are tested.
MESSAGE_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
)
# A channel that failed to connect waits a second before retrying by default, which
# would dominate the time spent waiting for a worker to come up.
_FAST_RECONNECT: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
)
TRACEBACK_HEADER = "Traceback (most recent call last):"

Compute = worker_common_pb2.ProcessRequest.ComputeRequest
ServingStatus: TypeAlias = worker_common_pb2.HealthCheckReply.ServingStatus.ValueType
SERVING = worker_common_pb2.HealthCheckReply.SERVING
NOT_SERVING = worker_common_pb2.HealthCheckReply.NOT_SERVING
AddressStyle = Literal["unix", "path", "tcp"]


def dial_target(address: str) -> str:
    """The gRPC target for an address the worker accepts (a bare path is a socket)."""
    return f"unix://{address}" if address.startswith("/") else address


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A fresh directory with a short path: unix socket paths stop at 107 bytes."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    path = Path(tempfile.mkdtemp(prefix="gridpod-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# What the agent double recorded.


@dataclass
class ResultStream:
    """One SendResult call: its messages, what they carried and the answer given."""

    token: str
    messages: list[agent_common_pb2.Result]
    results: dict[str, bytes]
    chunk_sizes: dict[str, list[int]]
    error: str | None


@dataclass
class SubmittedTask:
    """One task of a CreateTask stream; ``task_id`` is empty if it was refused."""

    expected_output_keys: list[str]
    data_dependencies: list[str]
    payload: bytes
    chunk_sizes: list[int]
    task_id: str = ""
    error: str | None = None


@dataclass
class CreateTaskCall:
    token: str
    task_options: objects_pb2.TaskOptions | None
    tasks: list[SubmittedTask]
    messages: list[agent_common_pb2.CreateTaskRequest]
    error: str | None


@dataclass(frozen=True)
class DataRequestRecord:
    method: str
    token: str
    key: str


@dataclass
class AgentScript:
    """How the agent answers; a test edits it before running its task."""

    # Result key -> the in-band Error answered when a worker sends it.
    refused_results: dict[str, str] = field(default_factory=dict)
    # Refuses a whole CreateTask stream with this error.
    create_task_error: str | None = None
    # Index of a task in its CreateTask stream -> the error answered for that task.
    create_task_item_errors: dict[int, str] = field(default_factory=dict)
    common_data: dict[str, bytes] = field(default_factory=dict)
    resource_data: dict[str, bytes] = field(default_factory=dict)
    direct_data_error: str = "GetDirectData is not supported by this agent"
    # Where a data error goes: DataReply.init.error (as for a missing key) or the
    # stream-level DataReply.error.
    data_error_in_init: bool = True
    # The first data chunk rides inside DataReply.init; False leaves an empty one
    # there and sends every chunk as DataReply.data.
    first_data_chunk_in_init: bool = True
    # Chunk size of data replies; 0 means the chunk size of the requesting task.
    data_chunk_size: int = 0


@dataclass
class _Admission:
    """A task attempt the agent knows about, while its Process call runs."""

    task_id: str
    chunk_size: int
    expected_outputs: frozenset[str]
    delegated: set[str] = field(default_factory=set)

    def owns(self, key: str) -> bool:
        return key in self.expected_outputs and key not in self.delegated


# Stream grammars the worker must follow towards the agent.


def _kind(message: agent_common_pb2.Result | agent_common_pb2.CreateTaskRequest) -> str:
    return message.WhichOneof("type") or "a message with no type"


_M = TypeVar("_M", agent_common_pb2.Result, agent_common_pb2.CreateTaskRequest)


class _Grammar(Generic[_M]):
    """Follows one stream message by message; each call returns a problem or None."""

    def feed(self, message: _M) -> str | None:
        raise NotImplementedError

    def end(self) -> str | None:
        raise NotImplementedError


class _ResultGrammar(_Grammar[agent_common_pb2.Result]):
    """init{key} data{data}* data{data_complete}, repeated, then init{last_result}."""

    def __init__(self) -> None:
        self.results: dict[str, bytearray] = {}
        self.chunk_sizes: dict[str, list[int]] = {}
        self._key: str | None = None
        self._finished = False

    def feed(self, message: agent_common_pb2.Result) -> str | None:
        if self._finished:
            return f"{_kind(message)} after init.last_result"
        if self._key is None:
            return self._feed_init(message)
        return self._feed_data(message, self._key)

    def _feed_init(self, message: agent_common_pb2.Result) -> str | None:
        if message.WhichOneof("type") != "init":
            return f"expected init, got {_kind(message)}"
        which = message.init.WhichOneof("type")
        if which == "last_result" and message.init.last_result:
            self._finished = True
            return None
        if which != "key" or not message.init.key:
            return "init with neither a key nor last_result"
        if message.init.key in self.results:
            return f"result {message.init.key!r} sent twice in one stream"
        self._key = message.init.key
        self.results[self._key] = bytearray()
        self.chunk_sizes[self._key] = []
        return None

    def _feed_data(self, message: agent_common_pb2.Result, key: str) -> str | None:
        if message.WhichOneof("type") != "data":
            return f"expected data of result {key!r}, got {_kind(message)}"
        which = message.data.WhichOneof("type")
        if which == "data":
            self.results[key] += message.data.data
            self.chunk_sizes[key].append(len(message.data.data))
            return None
        if which == "data_complete" and message.data.data_complete:
            self._key = None
            return None
        return f"data of result {key!r} with neither data nor data_complete"

    def end(self) -> str | None:
        return None if self._finished else "stream ended before init.last_result"


class _CreateTaskGrammar(_Grammar[agent_common_pb2.CreateTaskRequest]):
    """init_request, then (header task_payload{data}* task_payload{complete})*, last."""

    def __init__(self) -> None:
        self.task_options: objects_pb2.TaskOptions | None = None
        self.tasks: list[SubmittedTask] = []
        self._state: Literal["init", "header", "payload", "end"] = "init"
        self._payload = bytearray()

    def feed(self, message: agent_common_pb2.CreateTaskRequest) -> str | None:
        kind = message.WhichOneof("type")
        if self._state == "init":
            if kind != "init_request":
                return f"expected init_request first, got {_kind(message)}"
            self.task_options = objects_pb2.TaskOptions()
            self.task_options.CopyFrom(message.init_request.task_options)
            self._state = "header"
            return None
        if self._state == "header":
            return self._feed_header(message)
        if self._state == "payload":
            return self._feed_payload(message)
        return f"{_kind(message)} after init_task.last_task"

    def _feed_header(self, message: agent_common_pb2.CreateTaskRequest) -> str | None:
        if message.WhichOneof("type") != "init_task":
            return f"expected init_task, got {_kind(message)}"
        which = message.init_task.WhichOneof("type")
        if which == "last_task" and message.init_task.last_task:
            self._state = "end"
            return None
        if which != "header":
            return "init_task with neither header nor last_task"
        header = message.init_task.header
        task = SubmittedTask(
            list(header.expected_output_keys), list(header.data_dependencies), b"", []
        )
        self.tasks.append(task)
        self._payload = bytearray()
        self._state = "payload"
        return None

    def _feed_payload(self, message: agent_common_pb2.CreateTaskRequest) -> str | None:
        if message.WhichOneof("type") != "task_payload":
            return f"expected task_payload, got {_kind(message)}"
        which = message.task_payload.WhichOneof("type")
        task = self.tasks[-1]
        if which == "data":
            self._payload += message.task_payload.data
            task.chunk_sizes.append(len(message.task_payload.data))
            return None
        if which == "data_complete" and message.task_payload.data_complete:
            task.payload = bytes(self._payload)
            self._state = "header"
            return None
        return "task_payload with neither data nor data_complete"

    def end(self) -> str | None:
        return None if self._state == "end" else "stream ended before last_task"


def _parse(grammar: _Grammar[_M], messages: Sequence[_M]) -> str | None:
    """The first grammar or token problem of a stream, or None."""
    token = messages[0].communication_token if messages else ""
    for index, message in enumerate(messages):
        if message.communication_token != token:
            return f"message {index} carries another communication token"
        problem = grammar.feed(message)
        if problem is not None:
            return f"message {index}: {problem}"
    return grammar.end()


class ScriptedAgent(agent_service_pb2_grpc.AgentServicer):
    """The Agent service a worker talks to, answering as ``script`` says.

    A Process client admits each task's communication token before streaming the
    task, and revokes it once the reply is in: like a real agent, this one refuses
    tokens of tasks that are not running.
    """

    def __init__(self, address: str, *, max_workers: int = 16) -> None:
        self.script = AgentScript()
        self.violations: list[str] = []
        self.result_streams: list[ResultStream] = []
        self.create_calls: list[CreateTaskCall] = []
        self.data_requests: list[DataRequestRecord] = []
        self._stored: dict[str, dict[str, bytes]] = {}
        self._admitted: dict[str, _Admission] = {}
        self._lock = threading.Lock()
        self._task_ids = itertools.count(1)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            options=CHANNEL_OPTIONS,
        )
        agent_service_pb2_grpc.add_AgentServicer_to_server(self, self._server)
        port = self._server.add_insecure_port(address)
        if port == 0:
            raise RuntimeError(f"the agent double could not bind {address}")
        # A TCP address may ask for port 0: keep the one actually bound.
        self.address = (
            address
            if address.startswith("unix:")
            else f"{address.rsplit(':', 1)[0]}:{port}"
        )

    def start(self) -> ScriptedAgent:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> ScriptedAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Test-facing side.

    def admit(
        self,
        token: str,
        *,
        task_id: str,
        chunk_size: int,
        expected_outputs: Iterable[str],
    ) -> None:
        with self._lock:
            self._admitted[token] = _Admission(
                task_id, chunk_size, frozenset(expected_outputs)
            )

    def revoke(self, token: str) -> None:
        with self._lock:
            self._admitted.pop(token, None)

    def results(self, token: str) -> dict[str, bytes]:
        """The results the agent accepted from the task holding ``token``."""
        with self._lock:
            return dict(self._stored.get(token, {}))

    def streams_of(self, token: str) -> list[ResultStream]:
        with self._lock:
            return [s for s in self.result_streams if s.token == token]

    def creations_of(self, token: str) -> list[CreateTaskCall]:
        with self._lock:
            return [c for c in self.create_calls if c.token == token]

    def reset(self) -> None:
        """Forget every record and restore the default script."""
        with self._lock:
            self.script = AgentScript()
            self.violations.clear()
            self.result_streams.clear()
            self.create_calls.clear()
            self.data_requests.clear()
            self._stored.clear()

    def _admission(self, token: str, method: str) -> _Admission | None:
        admission = self._admitted.get(token)
        if admission is None:
            self.violations.append(f"{method} with unknown token {token!r}")
        return admission

    # The Agent service.

    def SendResult(
        self,
        request_iterator: Iterator[agent_common_pb2.Result],
        context: grpc.ServicerContext,
    ) -> agent_common_pb2.ResultReply:
        messages = list(request_iterator)
        token = messages[0].communication_token if messages else ""
        grammar = _ResultGrammar()
        problem = _parse(grammar, messages)
        results = {key: bytes(data) for key, data in grammar.results.items()}
        with self._lock:
            error = self._judge_results(token, problem, results, grammar.chunk_sizes)
            self.result_streams.append(
                ResultStream(token, messages, results, grammar.chunk_sizes, error)
            )
            if error is None:
                self._stored.setdefault(token, {}).update(results)
        if error is not None:
            return agent_common_pb2.ResultReply(communication_token=token, Error=error)
        return agent_common_pb2.ResultReply(
            communication_token=token, Ok=objects_pb2.Empty()
        )

    def _judge_results(
        self,
        token: str,
        problem: str | None,
        results: Mapping[str, bytes],
        chunk_sizes: Mapping[str, list[int]],
    ) -> str | None:
        admission = self._admission(token, "SendResult")
        if admission is None:
            return f"unknown communication token {token!r}"
        if problem is not None:
            self.violations.append(f"SendResult: {problem}")
            return f"malformed result stream: {problem}"
        for key, sizes in chunk_sizes.items():
            if any(size > admission.chunk_size for size in sizes):
                self.violations.append(
                    f"SendResult: a chunk of {key!r} exceeds {admission.chunk_size}"
                )
        for key in results:
            if key in self.script.refused_results:
                return self.script.refused_results[key]
            if not admission.owns(key):
                return f"result {key!r} is not owned by task {admission.task_id}"
        return None

    def CreateTask(
        self,
        request_iterator: Iterator[agent_common_pb2.CreateTaskRequest],
        context: grpc.ServicerContext,
    ) -> agent_common_pb2.CreateTaskReply:
        messages = list(request_iterator)
        token = messages[0].communication_token if messages else ""
        grammar = _CreateTaskGrammar()
        problem = _parse(grammar, messages)
        with self._lock:
            error = self._judge_creation(token, problem)
            call = CreateTaskCall(
                token, grammar.task_options, grammar.tasks, messages, error
            )
            self.create_calls.append(call)
            if error is not None:
                return agent_common_pb2.CreateTaskReply(
                    communication_token=token, error=error
                )
            statuses = [self._create(token, i, t) for i, t in enumerate(call.tasks)]
        return agent_common_pb2.CreateTaskReply(
            communication_token=token,
            creation_status_list=agent_common_pb2.CreateTaskReply.CreationStatusList(
                creation_statuses=statuses
            ),
        )

    def _judge_creation(self, token: str, problem: str | None) -> str | None:
        if self._admission(token, "CreateTask") is None:
            return f"unknown communication token {token!r}"
        if problem is not None:
            self.violations.append(f"CreateTask: {problem}")
            return f"malformed task stream: {problem}"
        return self.script.create_task_error

    def _create(
        self, token: str, index: int, task: SubmittedTask
    ) -> agent_common_pb2.CreateTaskReply.CreationStatus:
        status = agent_common_pb2.CreateTaskReply.CreationStatus
        task.error = self.script.create_task_item_errors.get(index)
        if task.error is not None:
            return status(error=task.error)
        task.task_id = f"subtask-{next(self._task_ids)}"
        # The child now owns the outputs it lists: the parent may no longer send them.
        self._admitted[token].delegated.update(task.expected_output_keys)
        return status(
            task_info=agent_common_pb2.CreateTaskReply.TaskInfo(
                task_id=task.task_id,
                expected_output_keys=task.expected_output_keys,
                data_dependencies=task.data_dependencies,
            )
        )

    def GetResourceData(
        self, request: agent_common_pb2.DataRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_common_pb2.DataReply]:
        return iter(self._serve("GetResourceData", request, "resource_data"))

    def GetCommonData(
        self, request: agent_common_pb2.DataRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_common_pb2.DataReply]:
        return iter(self._serve("GetCommonData", request, "common_data"))

    def GetDirectData(
        self, request: agent_common_pb2.DataRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_common_pb2.DataReply]:
        return iter(self._serve("GetDirectData", request, None))

    def _serve(
        self,
        method: str,
        request: agent_common_pb2.DataRequest,
        store: Literal["resource_data", "common_data"] | None,
    ) -> list[agent_common_pb2.DataReply]:
        token, key = request.communication_token, request.key
        with self._lock:
            self.data_requests.append(DataRequestRecord(method, token, key))
            admission = self._admission(token, method)
            script = self.script
        if admission is None:
            return [
                agent_common_pb2.DataReply(
                    communication_token=token,
                    error=f"unknown communication token {token!r}",
                )
            ]
        data = None if store is None else getattr(script, store).get(key)
        if data is None:
            reason = script.direct_data_error if store is None else "no such data"
            error = f"{reason} (key {key!r})"
            if script.data_error_in_init:
                return [_data_error(token, key, error)]
            return [agent_common_pb2.DataReply(communication_token=token, error=error)]
        size = script.data_chunk_size or admission.chunk_size
        return _data_replies(token, key, data, size, script.first_data_chunk_in_init)


def _data_error(token: str, key: str, error: str) -> agent_common_pb2.DataReply:
    return agent_common_pb2.DataReply(
        communication_token=token,
        init=agent_common_pb2.DataReply.Init(key=key, error=error),
    )


def _data_replies(
    token: str, key: str, data: bytes, chunk_size: int, first_in_init: bool
) -> list[agent_common_pb2.DataReply]:
    chunks = chunked(data, chunk_size) or [b""]
    first = chunks.pop(0) if first_in_init else b""
    replies = [
        agent_common_pb2.DataReply(
            communication_token=token,
            init=agent_common_pb2.DataReply.Init(
                key=key, data=objects_pb2.DataChunk(data=first)
            ),
        )
    ]
    replies += [
        agent_common_pb2.DataReply(
            communication_token=token, data=objects_pb2.DataChunk(data=chunk)
        )
        for chunk in chunks
    ]
    replies.append(
        agent_common_pb2.DataReply(
            communication_token=token, data=objects_pb2.DataChunk(data_complete=True)
        )
    )
    return replies


# Building Process streams.


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One task as the agent would stream it to the worker."""

    payload: bytes = b""
    dependencies: Mapping[str, bytes] = field(default_factory=dict)
    expected_outputs: Sequence[str] = ("out",)
    kernel: str | None = None
    # Merged with ``kernel``; None (and no kernel) leaves task_options unset.
    options: objects_pb2.TaskOptions | None = None
    chunk_size: int = REFERENCE_CHUNK_SIZE
    # As the reference agent does: the first payload chunk inside init_request, and
    # the payload field left unset when the payload is empty.
    first_chunk_in_init: bool = True
    session_id: str = "session-1"
    task_id: str = field(default_factory=lambda: f"task-{uuid.uuid4().hex[:12]}")
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def task_options(self) -> objects_pb2.TaskOptions | None:
        if self.options is None and self.kernel is None:
            return None
        options = objects_pb2.TaskOptions()
        if self.options is not None:
            options.CopyFrom(self.options)
        if self.kernel is not None:
            options.options["kernel"] = self.kernel
        return options


def init_request(spec: TaskSpec, first_chunk: bytes | None = None) -> Compute:
    init = Compute.InitRequest(
        configuration=objects_pb2.Configuration(data_chunk_max_size=spec.chunk_size),
        session_id=spec.session_id,
        task_id=spec.task_id,
        expected_output_keys=list(spec.expected_outputs),
    )
    options = spec.task_options()
    if options is not None:
        init.task_options.CopyFrom(options)
    if first_chunk is not None:
        init.payload.data = first_chunk
    return Compute(init_request=init)


def payload_chunk(data: bytes) -> Compute:
    return Compute(payload=objects_pb2.DataChunk(data=data))


def payload_complete() -> Compute:
    return Compute(payload=objects_pb2.DataChunk(data_complete=True))


def dependency_key(key: str) -> Compute:
    return Compute(init_data=Compute.InitData(key=key))


def dependency_chunk(data: bytes) -> Compute:
    return Compute(data=objects_pb2.DataChunk(data=data))


def dependency_complete() -> Compute:
    return Compute(data=objects_pb2.DataChunk(data_complete=True))


def last_data() -> Compute:
    return Compute(init_data=Compute.InitData(last_data=True))


def with_token(
    token: str, computes: Iterable[Compute]
) -> list[worker_common_pb2.ProcessRequest]:
    return [
        worker_common_pb2.ProcessRequest(communication_token=token, compute=compute)
        for compute in computes
    ]


def process_requests(spec: TaskSpec) -> list[worker_common_pb2.ProcessRequest]:
    """The whole stream of ``spec``, chunked at its chunk size."""
    chunks = chunked(spec.payload, spec.chunk_size)
    first = chunks.pop(0) if spec.first_chunk_in_init and chunks else None
    computes = [init_request(spec, first)]
    computes += [payload_chunk(chunk) for chunk in chunks]
    computes.append(payload_complete())
    for key, data in spec.dependencies.items():
        computes.append(dependency_key(key))
        computes += [dependency_chunk(c) for c in chunked(data, spec.chunk_size)]
        if not data:
            computes.append(dependency_chunk(b""))
        computes.append(dependency_complete())
    computes.append(last_data())
    return with_token(spec.token, computes)


# The worker side.


class WorkerClient:
    """What the agent does to a worker: health checks and Process calls."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(
            target, options=CHANNEL_OPTIONS + _FAST_RECONNECT
        )
        self._stub = worker_service_pb2_grpc.WorkerStub(self._channel)

    def health(self, timeout: float = 2.0) -> ServingStatus:
        reply = self._stub.HealthCheck(objects_pb2.Empty(), timeout=timeout)
        return reply.status

    def process(
        self,
        requests: Iterable[worker_common_pb2.ProcessRequest],
        timeout: float = 60.0,
    ) -> worker_common_pb2.ProcessReply:
        return self._stub.Process(iter(requests), timeout=timeout)

    def close(self) -> None:
        self._channel.close()


class WorkerFailed(AssertionError):
    """The worker subprocess did not start, stop or behave as a worker must."""


class WorkerProcess:
    """``python -m worker_sdk`` run from the repository root, logging to a file."""

    def __init__(
        self,
        handler: str,
        *,
        address: str,
        agent_address: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "worker_sdk",
            handler,
            "--address",
            address,
            "--agent",
            agent_address,
            *extra_args,
        ]
        self.address = address
        self.log_path = log_path
        self.client = WorkerClient(dial_target(address))
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        # Variables of a surrounding pod must not redirect the worker under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ComputePlane")}
        env["PYTHONUNBUFFERED"] = "1"
        self._log = self.log_path.open("ab")
        self._popen = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_serving(timeout)

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise WorkerFailed("the worker was never started")
        return self._popen

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.returncode
            if code is not None:
                raise WorkerFailed(
                    f"the worker exited with code {code} before serving:\n{self.log()}"
                )
            try:
                if self.client.health(timeout=0.5) == SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise WorkerFailed(
                    f"the worker was not SERVING within {timeout} s:\n{self.log()}"
                )
            time.sleep(0.02)

    def send_signal(self, number: signal.Signals) -> None:
        self.popen.send_signal(number)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise WorkerFailed(
                f"the worker did not exit within {timeout} s:\n{self.log()}"
            ) from None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code; a worker that does not exit is killed."""
        if self.returncode is None:
            self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
        self.client.close()
        if self._log is not None:
            self._log.close()

    def log(self, since: int = 0) -> str:
        with self.log_path.open("rb") as file:
            file.seek(since)
            return file.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0


def traceback_endings(log: str) -> list[str]:
    """The exception line that ends each traceback printed in ``log``."""
    lines = log.splitlines()
    endings = []
    for index, line in enumerate(lines):
        if TRACEBACK_HEADER not in line:
            continue
        after = index + 1
        while after < len(lines) and lines[after][:1] in (" ", "\t"):
            after += 1
        endings.append(lines[after] if after < len(lines) else "<truncated>")
    return endings


# An agent double and a worker wired together.


@dataclass
class TaskRun:
    """What one Process call produced."""

    spec: TaskSpec
    reply: worker_common_pb2.ProcessReply
    results: dict[str, bytes]
    result_streams: list[ResultStream]
    creations: list[CreateTaskCall]

    @property
    def ok(self) -> bool:
        return self.reply.output.WhichOneof("type") == "ok"

    @property
    def error(self) -> str | None:
        if self.reply.output.WhichOneof("type") != "error":
            return None
        return self.reply.output.error.details

    def result_chunk_sizes(self) -> list[int]:
        return [
            n for s in self.result_streams for v in s.chunk_sizes.values() for n in v
        ]


class Pod:
    """A scripted agent, a worker connected to it, and the log checks of both."""

    def __init__(self, agent: ScriptedAgent, worker: WorkerProcess) -> None:
        self.agent = agent
        self.worker = worker
        self.allowed_tracebacks: list[str] = []
        self._log_mark = 0

    @property
    def client(self) -> WorkerClient:
        return self.worker.client

    def run(
        self,
        spec: TaskSpec,
        *,
        requests: Sequence[worker_common_pb2.ProcessRequest] | None = None,
        timeout: float = 60.0,
    ) -> TaskRun:
        """Stream ``spec`` to the worker with its token admitted by the agent.

        ``requests`` replaces the stream built from ``spec``, for shapes the builder
        does not make; ``spec`` still says what the agent admits.
        """
        self.agent.admit(
            spec.token,
            task_id=spec.task_id,
            chunk_size=spec.chunk_size,
            expected_outputs=spec.expected_outputs,
        )
        try:
            stream = process_requests(spec) if requests is None else requests
            reply = self.client.process(stream, timeout)
        finally:
            self.agent.revoke(spec.token)
        return TaskRun(
            spec,
            reply,
            self.agent.results(spec.token),
            self.agent.streams_of(spec.token),
            self.agent.creations_of(spec.token),
        )

    def allow_traceback(self, *endings: str) -> None:
        """Tolerate logged tracebacks whose exception line contains one of these."""
        self.allowed_tracebacks.extend(endings)

    def log(self) -> str:
        """What the worker logged since the last reset."""
        return self.worker.log(self._log_mark)

    def problems(self) -> list[str]:
        """What went wrong since the last reset, beyond what the test asserted."""
        found = [f"agent saw a protocol violation: {v}" for v in self.agent.violations]
        log = self.log()
        for ending in traceback_endings(log):
            if not any(allowed in ending for allowed in self.allowed_tracebacks):
                found.append(f"worker logged an unexpected traceback:\n{log}")
                break
        return found

    def reset(self) -> None:
        self.agent.reset()
        self.allowed_tracebacks = []
        self._log_mark = self.worker.log_size()


def _bind_and_dial(style: AddressStyle, workdir: Path, name: str) -> tuple[str, str]:
    """Where a server binds, and the address spelled as the worker CLI is given it."""
    if style == "tcp":
        address = f"127.0.0.1:{free_port()}"
        return address, address
    path = workdir / f"{name}.sock"
    return f"unix://{path}", f"unix://{path}" if style == "unix" else str(path)


@contextmanager
def running_pod(
    handler: str,
    workdir: Path,
    *,
    worker_address: AddressStyle = "unix",
    agent_address: AddressStyle = "unix",
    extra_args: Sequence[str] = (),
    start_timeout: float = 20.0,
) -> Iterator[Pod]:
    """An agent double and a worker serving ``handler`` (``module:Class``)."""
    agent_bind, agent_arg = _bind_and_dial(agent_address, workdir, "agent")
    _, worker_arg = _bind_and_dial(worker_address, workdir, "worker")
    with ScriptedAgent(agent_bind) as agent:
        worker = WorkerProcess(
            handler,
            address=worker_arg,
            agent_address=agent_arg,
            log_path=workdir / "worker.log",
            extra_args=extra_args,
        )
        try:
            worker.start(start_timeout)
            yield Pod(agent, worker)
        finally:
            worker.close()
