"""Pods of real processes for the agent's end-to-end tests.

A pod is an ``agent run`` process and a ``python -m worker_sdk`` process sharing a
private folder for their two unix sockets; every pod of a test shares one SQLite
file, which the test also opens to submit tasks and read what happened.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from agent._ports import free_port
from agent.backend import (
    Backend,
    NewTask,
    ResultRecord,
    ResultStatus,
    TaskRecord,
    open_backend,
)
from gridpod_api import objects_pb2

ROOT = Path(__file__).resolve().parents[2]
HANDLER = "tests.agent.handlers:Grid"


def options(
    kernel: str,
    *,
    max_retries: int = 0,
    max_duration: timedelta | None = None,
    priority: int = 0,
) -> objects_pb2.TaskOptions:
    message = objects_pb2.TaskOptions(max_retries=max_retries, priority=priority)
    message.options["kernel"] = kernel
    if max_duration is not None:
        message.max_duration.FromTimedelta(max_duration)
    return message


@dataclass
class Pod:
    """One agent and its worker."""

    name: str
    folder: Path
    backend_url: str
    agent_args: Sequence[str] = ()
    # The worker's ``MODULE:CLASS``.
    handler: str = HANDLER
    health_port: int = field(default_factory=free_port)
    agent: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None

    @property
    def worker_socket(self) -> Path:
        return self.folder / "worker.sock"

    @property
    def agent_socket(self) -> Path:
        return self.folder / "agent.sock"

    def _spawn(self, role: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{role}.log").open("ab")
        env = {**os.environ, "GRIDPOD_TEST_AGENT": f"unix://{self.agent_socket}"}
        return subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
        )

    def start_worker(self) -> None:
        self.worker = self._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "worker_sdk",
                self.handler,
                "--address",
                f"unix://{self.worker_socket}",
                "--agent",
                f"unix://{self.agent_socket}",
            ],
        )

    def start_agent(self) -> None:
        self.agent = self._spawn(
            "agent",
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--backend",
                self.backend_url,
                "--worker",
                f"unix://{self.worker_socket}",
                "--listen",
                f"unix://{self.agent_socket}",
                "--health-port",
                str(self.health_port),
                "--agent-id",
                self.name,
                "--lease",
                "1",
                *self.agent_args,
            ],
        )

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self.http("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(
            f"pod {self.name} not ready after {timeout}s\n{self.logs()}"
        )

    def _check_alive(self) -> None:
        for role, process in (("agent", self.agent), ("worker", self.worker)):
            if process is not None and process.poll() is not None:
                raise AssertionError(
                    f"{role} of pod {self.name} exited with {process.returncode}\n"
                    f"{self.logs()}"
                )

    def logs(self) -> str:
        parts = []
        for role in ("agent", "worker"):
            path = self.folder / f"{role}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {role} of {self.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def kill(self, role: str, signum: int = signal.SIGKILL) -> None:
        process = self.agent if role == "agent" else self.worker
        assert process is not None
        process.send_signal(signum)
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in (self.agent, self.worker):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@dataclass
class Grid:
    """The pods of one test and the backend they share."""

    folder: Path
    backend: Backend
    backend_url: str
    pods: list[Pod] = field(default_factory=list)
    # What every pod's worker serves.
    handler: str = HANDLER

    def pod(self, *agent_args: str, start: bool = True) -> Pod:
        name = f"pod{len(self.pods)}"
        folder = self.folder / name
        folder.mkdir()
        pod = Pod(name, folder, self.backend_url, agent_args, self.handler)
        self.pods.append(pod)
        if start:
            pod.start_worker()
            pod.start_agent()
            pod.wait_ready()
        return pod

    async def session(self, max_retries: int = 0) -> str:
        record = await self.backend.create_session(
            objects_pb2.TaskOptions(max_retries=max_retries), [""]
        )
        return record.session_id

    async def submit(
        self,
        session_id: str,
        payload: bytes,
        outputs: Sequence[str],
        task_options: objects_pb2.TaskOptions,
        dependencies: Sequence[str] = (),
    ) -> TaskRecord:
        [record] = await self.submit_many(
            session_id, [(payload, outputs, dependencies)], task_options
        )
        return record

    async def submit_many(
        self,
        session_id: str,
        tasks: Sequence[tuple[bytes, Sequence[str], Sequence[str]]],
        task_options: objects_pb2.TaskOptions,
    ) -> list[TaskRecord]:
        new = []
        for payload, outputs, dependencies in tasks:
            blob = await self.backend.write_blob(_chunks(payload))
            new.append(NewTask(blob, tuple(outputs), tuple(dependencies)))
        created = await self.backend.submit_tasks(session_id, new, task_options)
        records = [c for c in created if isinstance(c, TaskRecord)]
        assert len(records) == len(created), created
        return records

    async def result(
        self, session_id: str, key: str, timeout: float = 30
    ) -> ResultRecord:
        """The result once it is no longer CREATED."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self.backend.get_result(session_id, key)
            if record.status != ResultStatus.CREATED:
                return record
            self._check_pods()
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"result {key} still CREATED after {timeout}s\n{self.logs()}"
        )

    async def value(self, session_id: str, key: str, timeout: float = 30) -> bytes:
        record = await self.result(session_id, key, timeout)
        assert record.status == ResultStatus.COMPLETED, (record, self.logs())
        return b"".join([c async for c in self.backend.read_result(session_id, key)])

    async def task_when(
        self, task_id: str, done: Callable[[TaskRecord], bool], timeout: float = 30
    ) -> TaskRecord:
        """The task once ``done(record)`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self.backend.get_task(task_id)
            if done(record):
                return record
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"task {task_id} not as expected after {timeout}s\n{self.logs()}"
        )

    def _check_pods(self) -> None:
        for pod in self.pods:
            if pod.agent is not None and pod.agent.poll() not in (None, -9, 0):
                raise AssertionError(f"agent of {pod.name} died\n{pod.logs()}")

    def logs(self) -> str:
        return "\n".join(pod.logs() for pod in self.pods)


async def _chunks(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
async def grid(tmp_path: Path) -> AsyncIterator[Grid]:
    url = f"sqlite://{tmp_path / 'state.db'}"
    backend = open_backend(url)
    grid = Grid(tmp_path, backend, url)
    try:
        yield grid
    finally:
        for pod in grid.pods:
            pod.stop()
        await backend.close()
