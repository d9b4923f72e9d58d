"""Pieces the benchmarks share: subprocesses, the agent's side of a worker's calls,
the streams an agent sends, generated payloads and the figures' tables."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any, TypeVar

# Before grpc: every process of a benchmark, the bare floor's included, runs gRPC
# with the settings our agent and worker run with, inherited from this one.
from worker_sdk._grpc_defaults import GRPC_DEFAULTS  # isort: skip

import grpc
import uvloop

from gridpod_api import (
    agent_common_pb2,
    agent_service_pb2_grpc,
    objects_pb2,
    worker_common_pb2,
    worker_service_pb2_grpc,
)

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

_T = TypeVar("_T")
_Request = worker_common_pb2.ProcessRequest
_Compute = _Request.ComputeRequest
_Context = grpc.aio.ServicerContext[Any, Any]
_Replies = AsyncIterator[agent_common_pb2.DataReply]
_SERVING = worker_common_pb2.HealthCheckReply.ServingStatus.SERVING

# Run first in each subprocess: with PR_SET_PDEATHSIG the kernel kills the child if
# this driver dies, even by SIGKILL; then the child's command replaces it.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('the benchmark is gone')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


class BenchError(Exception):
    """A process misbehaved: the figures of this run would mean nothing."""


# --- subprocesses ---------------------------------------------------------------


class Child:
    """One subprocess of a benchmark: its log, its /proc figures and its end."""

    def __init__(self, name: str, command: Iterable[str], log_path: Path) -> None:
        self.name = name
        self._command = list(command)
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = self._log_path.open("wb")
        path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        launcher = [sys.executable, "-c", _LAUNCHER, str(os.getpid())]
        self._process = subprocess.Popen(
            launcher + self._command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def cpu_seconds(self) -> float:
        """User and system time of the process so far, all its threads included."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_bytes(self, name: str) -> int:
        """A line of /proc/PID/status in bytes: VmRSS now, or the peak VmHWM."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) * 1024
        raise BenchError(f"no {name} in /proc/{self.pid}/status")

    async def wait(self, timeout: float) -> int:
        """The exit code of a process expected to end by itself."""
        assert self._process is not None
        if not await _exited(self._process, timeout):
            raise BenchError(f"{self.name} still runs after {timeout} s")
        return self._process.returncode

    async def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            if not await _exited(self._process, timeout=5.0):
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


async def _exited(process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def wait_for_socket(path: Path, child: Child, timeout: float) -> None:
    # Connect only once the socket exists: a channel that failed to connect backs
    # off for a second or more before it tries again.
    deadline = time.monotonic() + timeout
    while not path.exists():
        child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not listen within {timeout} s")
        await asyncio.sleep(0.02)


async def wait_serving(
    stub: worker_service_pb2_grpc.WorkerAsyncStub,
    name: str,
    timeout: float,
    check_alive: Callable[[], None] = lambda: None,
) -> None:
    """Return once the worker ``name`` behind ``stub`` answers SERVING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive()
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await stub.HealthCheck(
                objects_pb2.Empty(), timeout=1.0, wait_for_ready=True
            )
            if reply.status == _SERVING:
                return
        await asyncio.sleep(0.02)
    raise BenchError(f"{name} was not SERVING within {timeout} s")


# --- the agent's side of a worker's calls ---------------------------------------


class BenchAgent(agent_service_pb2_grpc.AgentServicer):
    """Takes every result and keeps its value; refuses everything else."""

    def __init__(self) -> None:
        self.results: dict[str, bytes] = {}

    async def SendResult(
        self,
        request_iterator: AsyncIterator[agent_common_pb2.Result],
        context: _Context,
    ) -> agent_common_pb2.ResultReply:
        token = key = ""
        parts: list[bytes] = []
        async for message in request_iterator:
            token = message.communication_token
            if message.WhichOneof("type") == "init":
                if message.init.WhichOneof("type") == "key":
                    key, parts = message.init.key, []
            elif message.data.WhichOneof("type") == "data":
                parts.append(message.data.data)
            else:
                self.results[key] = b"".join(parts)
        return agent_common_pb2.ResultReply(
            communication_token=token, Ok=objects_pb2.Empty()
        )

    async def CreateTask(self, request_iterator: Any, context: _Context) -> Any:
        await _refuse(context)

    async def GetResourceData(self, request: Any, context: _Context) -> _Replies:
        await _refuse(context)
        yield agent_common_pb2.DataReply()  # unreachable: it makes a reply stream

    async def GetCommonData(self, request: Any, context: _Context) -> _Replies:
        await _refuse(context)
        yield agent_common_pb2.DataReply()

    async def GetDirectData(self, request: Any, context: _Context) -> _Replies:
        await _refuse(context)
        yield agent_common_pb2.DataReply()


async def _refuse(context: _Context) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this benchmark")


@contextlib.asynccontextmanager
async def agent_server(socket_path: Path, agent: BenchAgent) -> AsyncIterator[None]:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    agent_service_pb2_grpc.add_AgentServicer_to_server(agent, server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    try:
        yield
    finally:
        await server.stop(grace=None)


# --- what the agent streams to a worker ----------------------------------------

_OPTIONS = objects_pb2.TaskOptions(
    max_retries=2, priority=1, partition_id="default", application_name="bench"
)
_OPTIONS.max_duration.FromSeconds(300)


def task_messages(
    number: int, chunks: Iterable[bytes], chunk_size: int
) -> Iterator[_Request]:
    """A Process stream as the reference agent sends it: first chunk inside
    init_request, then payload chunks, data_complete and last_data."""
    token, chunks = f"token-{number}", iter(chunks)
    init = _Compute.InitRequest(
        configuration=objects_pb2.Configuration(data_chunk_max_size=chunk_size),
        session_id="bench-session",
        task_id=f"task-{number}",
        task_options=_OPTIONS,
        expected_output_keys=[output_key(number)],
        payload=objects_pb2.DataChunk(data=next(chunks, b"")),
    )
    yield _Request(communication_token=token, compute=_Compute(init_request=init))
    for chunk in chunks:
        payload = objects_pb2.DataChunk(data=chunk)
        yield _Request(communication_token=token, compute=_Compute(payload=payload))
    complete = objects_pb2.DataChunk(data_complete=True)
    yield _Request(communication_token=token, compute=_Compute(payload=complete))
    last = _Compute.InitData(last_data=True)
    yield _Request(communication_token=token, compute=_Compute(init_data=last))


def output_key(number: int) -> str:
    return f"result-{number}"


# --- payloads -------------------------------------------------------------------

TINY_PAYLOAD = b"tiny payload"

# A block of prime length, so that no chunk size lines up with its period.
_BLOCK = (hashlib.sha256(b"gridpod").digest() * 2048)[:65_521]


def make_payload(size: int) -> bytes:
    repeats, rest = divmod(size, len(_BLOCK))
    return _BLOCK * repeats + _BLOCK[:rest]


def generated_chunks(size: int, chunk_size: int) -> Iterator[bytes]:
    """The bytes of ``make_payload(size)`` in chunks, never holding them all."""
    # Every chunk is a slice of this window, starting where the block's period is.
    window = memoryview(_BLOCK * (chunk_size // len(_BLOCK) + 2))
    for start in range(0, size, chunk_size):
        offset = start % len(_BLOCK)
        yield bytes(window[offset : offset + min(chunk_size, size - start)])


# --- reports and the main loop --------------------------------------------------


def row(
    label: str, cells: Iterable[str], width: int = 17, label_width: int = 22
) -> str:
    return f"  {label:<{label_width}}" + "".join(f"{cell:>{width}}" for cell in cells)


def mib(size: int) -> str:
    return f"{size / MIB:.0f} MiB"


def print_header(title: str, more: str = "") -> None:
    versions = f"grpcio {grpc.__version__}, uvloop {version('uvloop')}{more}"
    print(
        f"gridpod {title} benchmark: Python {platform.python_version()}, "
        f"{versions}, {os.cpu_count()} CPUs; figures vary from run to run"
    )
    settings = ", ".join(f"{name}={os.environ.get(name)}" for name in GRPC_DEFAULTS)
    print(f"gRPC settings of every process: {settings}")
    print()


async def _cancelled_by_sigterm(main: Coroutine[Any, Any, _T]) -> _T:
    # SIGTERM cancels the run, so that its processes are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await main


def run_benchmark(main: Coroutine[Any, Any, list[str]]) -> None:
    """Run ``main``, then print the targets it missed and the time it took."""
    started = time.monotonic()
    try:
        missed = uvloop.run(_cancelled_by_sigterm(main))
    except BenchError as error:
        sys.exit(f"benchmark failed: {error}")
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.exit("benchmark interrupted; its processes are stopped")
    print()
    for line in missed:
        print(line)
    print(f"done in {time.monotonic() - started:.0f} s")
