"""A whole grid on one machine: a backend, a control plane, and pods of an agent and
a worker each, the workers being any command that speaks the worker protocol.

The control plane runs in this process; every agent and every worker is a process
of its own, so that pods compute in parallel as they would on a cluster. A pod's two
sockets live in a private folder, announced to the worker through ArmoniK's
``ComputePlane__*`` variables. A process of a pod that exits while the grid runs is
started again after a pause that grows while it keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from agent._config import DEFAULT_BUSY_POLL
from agent._errors import AgentError
from agent._ports import free_port
from agent.backend import Backend, open_backend
from agent.control._config import ControlPlaneConfig
from agent.control._server import ControlPlane
from worker_sdk import Address

__all__ = ["LocalConfig", "LocalGrid", "busy_poll_for"]

logger = logging.getLogger(__name__)

# A process that ran this long before exiting is restarted at once; one that keeps
# failing sooner waits twice as long each time, up to the maximum.
_HEALTHY_RUN = 10.0
_RESTART_PAUSE = 0.5
_RESTART_PAUSE_MAX = 10.0
_READY_POLL = 0.02
# The guard's exit status when the command could not be executed, as in shells.
_NOT_STARTED = 127


class LocalGridError(AgentError):
    """The local grid could not start."""


def busy_poll_for(pods: int, cores: int | None = None) -> int:
    """The ``--busy-poll`` microseconds of the agents of ``pods`` pods on this
    machine: none once their agents and workers outnumber its cores, since polling
    there takes the CPU from the very processes an agent waits for."""
    if 2 * pods > (_cores() if cores is None else cores):
        return 0
    return DEFAULT_BUSY_POLL // timedelta(microseconds=1)


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    """What ``agent local`` runs."""

    worker_command: Sequence[str]
    workers: int = 1
    listen: Address = field(default_factory=lambda: Address.parse("127.0.0.1:5001"))
    # None: a state file in a temporary folder, deleted when the grid stops.
    backend_url: str | None = None
    concurrency: int = 1
    partition_id: str = ""
    # How long an agent's running tasks may take to finish when the grid stops.
    grace_period: float = 10.0
    ready_timeout: float = 60.0
    log_format: str = "text"
    control: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)

    def __post_init__(self) -> None:
        if not self.worker_command:
            raise ValueError("no worker command: give it after --")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")


class _Supervised:
    """One process of a pod, started again whenever it exits while wanted."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self._command = argv[0]
        # Through the guard, so that the process dies with this one, however it dies.
        self._argv = [sys.executable, "-m", "agent._guard", str(os.getpid()), "--"]
        self._argv += argv
        self._env = dict(env)
        self._process: asyncio.subprocess.Process | None = None
        self._wanted = True
        self._watch: asyncio.Task[None] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._watch = asyncio.create_task(self._keep_running(), name=self.name)

    async def _keep_running(self) -> None:
        pause = _RESTART_PAUSE
        while self._wanted:
            began = time.monotonic()
            await self._spawn()
            assert self._process is not None
            code = await self._process.wait()
            if not self._wanted:
                return
            if code == _NOT_STARTED:
                self._wanted = False
                raise LocalGridError(
                    f"cannot start {self.name}: {self._command!r} was not found or "
                    "is not executable"
                )
            ran = time.monotonic() - began
            pause = _RESTART_PAUSE if ran >= _HEALTHY_RUN else pause
            logger.warning(
                "%s exited with %s after %.1fs; starting it again in %.1fs",
                self.name,
                code,
                ran,
                pause,
                extra={"pod_process": self.name, "exit_code": code},
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RESTART_PAUSE_MAX)

    async def _spawn(self) -> None:
        try:
            # A session of its own: Ctrl-C in the terminal reaches this process
            # only, which then stops the pods in order.
            self._process = await asyncio.create_subprocess_exec(
                *self._argv, env=self._env, start_new_session=True
            )
        except OSError as error:
            self._wanted = False
            raise LocalGridError(
                f"cannot start {self.name} ({self._command}): {error}"
            ) from error
        self.starts += 1
        logger.info(
            "%s started, pid %d",
            self.name,
            self._process.pid,
            extra={"pod_process": self.name, "pid": self._process.pid},
        )

    def signal(self, signum: int) -> None:
        self._wanted = False
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def stop(self, timeout: float) -> None:
        """SIGTERM (if not sent yet), then SIGKILL after ``timeout`` seconds."""
        self.signal(signal.SIGTERM)
        process = self._process
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except asyncio.TimeoutError:
                logger.warning("%s did not stop in %.1fs: killed", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    def failed(self) -> BaseException | None:
        """The error that stopped the supervision, if any."""
        if self._watch is None or not self._watch.done():
            return None
        if self._watch.cancelled():
            return None
        return self._watch.exception()


@dataclass
class _Pod:
    index: int
    folder: Path
    health_port: int
    agent: _Supervised
    worker: _Supervised


class LocalGrid:
    """Start with ``await grid.start()``; ``grid.address`` is the control plane's."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self._folder = Path(tempfile.mkdtemp(prefix="gridpod-local-"))
        self.backend_url = config.backend_url or f"sqlite://{self._folder}/state.db"
        self._control: ControlPlane | None = None
        self._backend: Backend | None = None
        self.pods: list[_Pod] = []

    @property
    def address(self) -> str:
        if self._control is None:
            raise LocalGridError("the local grid is not started")
        return str(self._control.bound_address)

    async def start(self) -> None:
        self._backend = open_backend(self.backend_url)
        self._control = ControlPlane(
            self._backend, self.config.control, self.config.listen
        )
        try:
            for index in range(self.config.workers):
                self.pods.append(self._start_pod(index))
            await self._wait_ready()
            # Last, so that a client that reaches the control plane finds every pod
            # ready to take its tasks.
            await self._control.start()
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "local grid ready: control plane on %s, %d pod(s), state in %s",
            self.address,
            len(self.pods),
            self.backend_url,
        )

    def _start_pod(self, index: int) -> _Pod:
        folder = self._folder / f"pod-{index}"
        folder.mkdir(mode=0o700)
        worker_socket, agent_socket = folder / "worker.sock", folder / "agent.sock"
        health_port = free_port()
        config = self.config
        agent = _Supervised(
            f"agent-{index}",
            [
                sys.executable,
                *("-m", "agent", "run", "--backend", self.backend_url),
                *("--worker", f"unix://{worker_socket}"),
                *("--listen", f"unix://{agent_socket}"),
                *("--concurrency", str(config.concurrency)),
                *("--partition", config.partition_id),
                *("--health-port", str(health_port)),
                *("--grace-period", str(config.grace_period)),
                *("--agent-id", f"local-{index}"),
                *("--log-format", config.log_format),
                *("--busy-poll", str(busy_poll_for(config.workers))),
            ],
            os.environ,
        )
        worker = _Supervised(
            f"worker-{index}",
            config.worker_command,
            {
                **os.environ,
                "ComputePlane__WorkerChannel__Address": str(worker_socket),
                "ComputePlane__WorkerChannel__SocketType": "UnixDomainSocket",
                "ComputePlane__AgentChannel__Address": str(agent_socket),
                "ComputePlane__AgentChannel__SocketType": "UnixDomainSocket",
            },
        )
        worker.start()
        agent.start()
        return _Pod(index, folder, health_port, agent, worker)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout
        waiting = list(self.pods)
        while waiting:
            waiting = [pod for pod in waiting if not await _ready(pod.health_port)]
            for pod in self.pods:
                for process in (pod.agent, pod.worker):
                    error = process.failed()
                    if error is not None:
                        raise error
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"pod-{pod.index}" for pod in waiting)
                raise LocalGridError(
                    f"{names} not ready after {self.config.ready_timeout:.0f}s: "
                    "does the worker command start a worker on "
                    "$ComputePlane__WorkerChannel__Address?"
                )
            if waiting:
                await asyncio.sleep(_READY_POLL)

    async def stop(self) -> None:
        """Drain the agents (their tasks finish or go back to the queue), then stop
        the workers and the control plane."""
        grace = self.config.grace_period
        await asyncio.gather(*(pod.agent.stop(grace + 5.0) for pod in self.pods))
        await asyncio.gather(*(pod.worker.stop(10.0) for pod in self.pods))
        if self._control is not None:
            await self._control.stop(1.0)
            self._control = None
        if self._backend is not None:
            await self._backend.close()
            self._backend = None
        shutil.rmtree(self._folder, ignore_errors=True)


async def _ready(port: int) -> bool:
    """Whether the agent on ``port`` answers 200 on /readyz."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status_line.split(b" ")[1:2] == [b"200"]
