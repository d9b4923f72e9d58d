"""Control planes for tests: in-process on a unix socket, or an ``agent
control-plane`` process on TCP, each over a fresh SQLite file per test.

``backend`` is the test's own instance on that file, apart from the control plane's
(as another process would be): a test drives tasks through their life with it.
A test module can override ``control_plane_config``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from agent.backend import (
    Attempt,
    Backend,
    NewTask,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
    open_backend,
)
from agent.control import ControlPlane, ControlPlaneConfig
from gridpod_api import objects_pb2
from worker_sdk._address import Address
from worker_sdk._agent import CHANNEL_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
LEASE = timedelta(seconds=30)
AGENT_ID = "test-agent"

_SERVING_LINE = re.compile(r"control plane serving on (\S+)")


@dataclass
class RunningControlPlane:
    """An in-process control plane and a channel to it."""

    address: str
    channel: grpc.aio.Channel
    plane: ControlPlane
    backend_url: str


@dataclass
class ControlPlaneProcess:
    """An ``agent control-plane`` process listening on ``address`` (host:port)."""

    address: str
    process: subprocess.Popen[bytes]
    log: Path
    backend_url: str

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, then its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite://{tmp_path / 'state.db'}"


@pytest.fixture
async def backend(backend_url: str) -> AsyncIterator[Backend]:
    opened = open_backend(backend_url)
    yield opened
    await opened.close()


@pytest.fixture
def control_plane_config() -> ControlPlaneConfig:
    return ControlPlaneConfig()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short: a unix socket's path must fit in about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="gridpod-") as folder:
        yield Path(folder)


@contextlib.asynccontextmanager
async def serving(
    backend_url: str, config: ControlPlaneConfig, folder: Path
) -> AsyncIterator[RunningControlPlane]:
    """A control plane on its own backend instance, on a unix socket in ``folder``."""
    served = open_backend(backend_url)
    address = Address("unix", str(folder / "control.sock"))
    plane = ControlPlane(served, config, address)
    await plane.start()
    channel = grpc.aio.insecure_channel(address.grpc_target, options=CHANNEL_OPTIONS)
    try:
        yield RunningControlPlane(str(address), channel, plane, backend_url)
    finally:
        await channel.close()
        await plane.stop(grace=0.5)
        await served.close()


@pytest.fixture
async def control_plane(
    backend_url: str, control_plane_config: ControlPlaneConfig, socket_dir: Path
) -> AsyncIterator[RunningControlPlane]:
    async with serving(backend_url, control_plane_config, socket_dir) as running:
        yield running


def spawn_control_plane(
    backend_url: str, folder: Path, *args: str, timeout: float = 20
) -> ControlPlaneProcess:
    """Start ``agent control-plane`` on a port of its choosing; return once it
    says where it listens."""
    log = folder / "control-plane.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "control-plane",
                "--backend",
                backend_url,
                "--listen",
                "127.0.0.1:0",
                *args,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _SERVING_LINE.search(log.read_text(errors="replace"))
        if found:
            return ControlPlaneProcess(found.group(1), process, log, backend_url)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    process.wait()
    raise AssertionError(f"the control plane did not start:\n{log.read_text()}")


@pytest.fixture
def control_plane_process(
    backend_url: str, tmp_path: Path
) -> Iterator[ControlPlaneProcess]:
    started = spawn_control_plane(backend_url, tmp_path)
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait(timeout=10)


# -- driving the backend from a test -------------------------------------------------


def task_options(
    *, max_retries: int = 0, priority: int = 0, **fields: str
) -> objects_pb2.TaskOptions:
    """Options with these retries, priority and string fields (application_name...)."""
    options = objects_pb2.TaskOptions(max_retries=max_retries, priority=priority)
    for name, value in fields.items():
        setattr(options, name, value)
    return options


async def new_session(
    backend: Backend, options: objects_pb2.TaskOptions | None = None
) -> str:
    record = await backend.create_session(options or objects_pb2.TaskOptions(), [])
    return record.session_id


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def submit(
    backend: Backend,
    session_id: str,
    outputs: Sequence[str],
    dependencies: Sequence[str] = (),
    options: objects_pb2.TaskOptions | None = None,
) -> TaskRecord:
    """Create one task, which must be accepted."""
    payload = await backend.write_blob(_one(b"payload"))
    [answer] = await backend.submit_tasks(
        session_id, [NewTask(payload, outputs, dependencies)], options
    )
    assert not isinstance(answer, TaskRefusal), answer
    return answer


async def acquire(backend: Backend, *, start: bool = True) -> Attempt:
    """Take the next queued task of the default partition, PROCESSING unless
    ``start`` is False (then DISPATCHED)."""
    attempt = await backend.acquire(AGENT_ID, "", LEASE)
    assert attempt is not None, "no task is queued"
    if start:
        await backend.start(attempt)
    return attempt


async def complete(
    backend: Backend, attempt: Attempt, values: Mapping[str, bytes] | None = None
) -> TaskRecord:
    """Commit the attempt, each expected output's value its own key by default."""
    if values is None:
        values = {key: key.encode() for key in attempt.task.expected_outputs}
    await backend.complete(attempt, values)
    record = await backend.get_task(attempt.task.task_id)
    assert record.status == TaskStatus.COMPLETED
    return record


async def run_to_completion(backend: Backend) -> TaskRecord:
    return await complete(backend, await acquire(backend))


# -- calling ---------------------------------------------------------------------


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status and details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


def timestamp(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def between(earlier: datetime | None, later: datetime | None) -> Timestamp:
    """A moment strictly between two records' times, clear of rounding."""
    assert earlier is not None and later is not None and earlier < later
    return timestamp(earlier + (later - earlier) / 2)
