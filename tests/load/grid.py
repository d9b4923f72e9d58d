"""The processes of a load run: an ``agent control-plane`` on TCP and pods of an
agent and a worker, over one backend; and the limits the control plane enforces."""

from __future__ import annotations

import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.agent.conftest import Pod
from tests.control.conftest import ControlPlaneProcess, spawn_control_plane

HANDLER = "tests.load.handlers:Load"
# The default lease, not the tests' short one: on a machine this loaded a lease
# of seconds can lapse, and the task would fail over, which is not what this run
# measures.
_AGENT_ARGS = ("--lease", "30", "--concurrency", "4", "--log-level", "warning")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What the control plane refuses with RESOURCE_EXHAUSTED: small enough for
    bad clients to pass cheaply, large enough for every good request."""

    max_payload_size: int = 512 * 1024
    max_tasks_per_request: int = 100
    max_expected_outputs: int = 4
    max_streams_per_client: int = 256

    def args(self) -> list[str]:
        return [
            "--max-payload-size",
            str(self.max_payload_size),
            "--max-tasks-per-request",
            str(self.max_tasks_per_request),
            "--max-expected-outputs",
            str(self.max_expected_outputs),
            "--max-streams-per-client",
            str(self.max_streams_per_client),
        ]


@dataclass
class LoadGrid:
    """The running processes, and where each kind of client reaches them."""

    control_plane: ControlPlaneProcess
    pods: list[Pod]
    port: int
    # Bad clients come from ::1 when the host has it: the control plane counts
    # open streams per client address, so their streams do not eat into the
    # good clients' budget, as on a grid where they come from other hosts.
    separate_addresses: bool

    @property
    def good_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def bad_address(self) -> str:
        return f"[::1]:{self.port}" if self.separate_addresses else self.good_address

    def exited(self) -> list[str]:
        """A line for each process that is no longer running."""
        processes: list[tuple[str, subprocess.Popen[bytes] | None]] = [
            ("the control plane", self.control_plane.process)
        ]
        for pod in self.pods:
            processes += [(f"the agent of {pod.name}", pod.agent)]
            processes += [(f"the worker of {pod.name}", pod.worker)]
        return [
            f"{name} exited with {process.returncode}"
            for name, process in processes
            if process is not None and process.poll() is not None
        ]

    def cpu_seconds(self) -> dict[str, float]:
        """The CPU time each kind of process used so far, from /proc: empty where
        there is none."""
        kinds: dict[str, list[subprocess.Popen[bytes] | None]] = {
            "control plane": [self.control_plane.process],
            "agents": [pod.agent for pod in self.pods],
            "workers": [pod.worker for pod in self.pods],
        }
        try:
            return {
                kind: sum(_cpu_seconds(p.pid) for p in processes if p is not None)
                for kind, processes in kinds.items()
            }
        except OSError:
            return {}

    def logs(self) -> str:
        tail = self.control_plane.logs().splitlines()[-40:]
        pods = "\n".join(pod.logs() for pod in self.pods)
        return "--- control plane\n" + "\n".join(tail) + "\n" + pods

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()
        _kill(self.control_plane)


def start_grid(
    backend_url: str, folder: Path, limits: Limits, pods: int = 2
) -> LoadGrid:
    """The control plane and ``pods`` pods, started side by side; returns once
    every one serves, or stops those that started and raises."""
    started: list[Pod] = []
    with ThreadPoolExecutor(1) as pool:
        plane = pool.submit(_control_plane, backend_url, folder, limits)
        try:
            started += [_pod(backend_url, folder, n) for n in range(pods)]
            for pod in started:
                pod.wait_ready()
            control_plane = plane.result()
        except BaseException:
            for pod in started:
                pod.stop()
            if plane.exception() is None:
                _kill(plane.result())
            raise
    port = int(control_plane.address.rpartition(":")[2])
    return LoadGrid(control_plane, started, port, _reaches_ipv6_loopback(port))


def _kill(control_plane: ControlPlaneProcess) -> None:
    if control_plane.process.poll() is None:
        control_plane.process.kill()
        control_plane.process.wait(timeout=10)


def _control_plane(
    backend_url: str, folder: Path, limits: Limits
) -> ControlPlaneProcess:
    # On localhost, gRPC binds one port on both 127.0.0.1 and ::1. The log stays
    # at info: its line "serving on" tells the port.
    args = ["--listen", "localhost:0", *limits.args()]
    return spawn_control_plane(backend_url, folder, *args)


def _pod(backend_url: str, folder: Path, number: int) -> Pod:
    name = f"pod{number}"
    pod_folder = folder / name
    pod_folder.mkdir()
    pod = Pod(name, pod_folder, backend_url, _AGENT_ARGS, HANDLER)
    pod.start_worker()
    pod.start_agent()
    return pod


def _cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/PID/stat, after the command in parentheses.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reaches_ipv6_loopback(port: int) -> bool:
    try:
        with socket.create_connection(("::1", port), timeout=1):
            return True
    except OSError:
        return False
