"""The worker as a process: health, addresses, its socket, concurrency and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.worker.conftest import Pods
from tests.worker.scripted_agent import (
    NOT_SERVING,
    SERVING,
    Pod,
    ServingStatus,
    TaskRun,
    TaskSpec,
)

# Longer than the gRPC server's own stop grace, so that only a real drain passes.
DRAIN_SLEEP = 2.0


def _sleep(
    seconds: float, marker: Path | None = None, kernel: str = "sleep"
) -> TaskSpec:
    spec = {"seconds": seconds, "marker": None if marker is None else str(marker)}
    return TaskSpec(kernel=kernel, payload=json.dumps(spec).encode())


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.01)


def _status(pod: Pod) -> ServingStatus | grpc.StatusCode:
    """The health status, or the gRPC code of a worker that no longer answers."""
    try:
        return pod.client.health(timeout=1.0)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return error.code()


def test_health_check_is_serving(pods: Pods) -> None:
    assert pods.shared("Sleeper").client.health() == SERVING


@pytest.mark.parametrize("kernel", ["sleep", "sleep-sync"])
def test_sigterm_lets_the_running_task_finish_then_exits_zero(
    pods: Pods, kernel: str
) -> None:
    workdir = pods.workdir()
    pod = pods.fresh("Sleeper", workdir=workdir)
    marker = workdir / "started"
    with ThreadPoolExecutor(max_workers=1) as pool:
        spec = _sleep(DRAIN_SLEEP, marker, kernel)
        running: Future[TaskRun] = pool.submit(pod.run, spec)
        _wait_for(marker.exists, 10, "the kernel did not start")
        pod.worker.send_signal(signal.SIGTERM)
        _wait_for(lambda: _status(pod) != SERVING, 2, "HealthCheck still said SERVING")
        assert not running.done()
        draining = _status(pod)
        assert draining in (NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
        run = running.result(timeout=10)
    assert run.error is None
    assert run.results == {"out": b"slept"}
    assert pod.worker.wait(10) == 0
    assert _status(pod) == grpc.StatusCode.UNAVAILABLE


def test_no_new_task_is_accepted_while_draining(pods: Pods) -> None:
    workdir = pods.workdir()
    pod = pods.fresh("Sleeper", workdir=workdir)
    marker = workdir / "started"
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(pod.run, _sleep(1.0, marker))
        _wait_for(marker.exists, 10, "the kernel did not start")
        pod.worker.send_signal(signal.SIGTERM)
        _wait_for(lambda: _status(pod) != SERVING, 2, "still SERVING")
        with pytest.raises(grpc.RpcError):
            pod.run(_sleep(0.0), timeout=5)
        assert running.result(timeout=10).results == {"out": b"slept"}
    assert pod.worker.wait(10) == 0


@pytest.mark.parametrize("kernel", ["sleep", "sleep-sync"])
def test_concurrent_tasks_run_side_by_side(pods: Pods, kernel: str) -> None:
    pod = pods.shared("Sleeper")
    seconds, count = 0.5, 4
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        specs = [_sleep(seconds, kernel=kernel) for _ in range(count)]
        runs = list(pool.map(pod.run, specs))
    elapsed = time.monotonic() - started
    assert [run.results for run in runs] == [{"out": b"slept"}] * count
    # Run one after the other they would take count * seconds.
    assert elapsed < seconds * count / 1.6, elapsed


def _echo_works(pod: Pod) -> None:
    run = pod.run(TaskSpec(payload=b"over the wire"))
    assert run.error is None
    assert run.results == {"out": b"over the wire"}


def test_tcp_addresses(pods: Pods) -> None:
    pod = pods.fresh("Single", worker_address="tcp", agent_address="tcp")
    assert not pod.worker.address.startswith(("unix:", "/"))
    _echo_works(pod)


def test_bare_path_addresses(pods: Pods) -> None:
    pod = pods.fresh("Single", worker_address="path", agent_address="path")
    assert pod.worker.address.startswith("/")
    assert "--agent" in pod.worker.command
    assert pod.worker.command[pod.worker.command.index("--agent") + 1][0] == "/"
    _echo_works(pod)


def _socket_mode(path: Path) -> int:
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode), f"{path} is not a socket"
    return stat.S_IMODE(mode)


def test_unix_socket_is_owner_only(pods: Pods) -> None:
    workdir = pods.workdir()
    pod = pods.fresh("Single", workdir=workdir)
    mode = _socket_mode(workdir / "worker.sock")
    assert mode & 0o077 == 0, oct(mode)
    _echo_works(pod)


def test_stale_socket_file_is_replaced(pods: Pods) -> None:
    workdir = pods.workdir()
    path = workdir / "worker.sock"
    # A socket file nobody listens on, as a killed worker leaves behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    # World-writable, so that a socket file left in place would show.
    os.chmod(path, 0o777)
    pod = pods.fresh("Single", workdir=workdir)
    assert _socket_mode(path) & 0o077 == 0
    _echo_works(pod)
