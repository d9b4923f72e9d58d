"""``agent local`` as a user runs it: a real process tree, driven by the client."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent._local import busy_poll_for
from agent._ports import free_port
from worker_sdk import TaskOptions
from worker_sdk.client import Client, ControlPlaneUnavailable, TaskSpec

REPO = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "worker_sdk", "tests.agent.handlers:Grid"]
READY_TIMEOUT = 60.0


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


class LocalGridProcess:
    def __init__(self, process: subprocess.Popen[bytes], address: str) -> None:
        self.process = process
        self.address = address

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"agent local exited with {code}")
            try:
                with Client(self.address, call_timeout=1.0) as client:
                    client.configuration()
                return
            except ControlPlaneUnavailable:
                time.sleep(0.1)
        raise AssertionError("agent local did not come up")


@pytest.fixture
def local_grid() -> Iterator[LocalGridProcess]:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent", "local"),
            *("--listen", address, "--workers", "2", "--grace-period", "2"),
            "--",
            *WORKER,
        ],
        cwd=REPO,
    )
    grid = LocalGridProcess(process, address)
    try:
        grid.wait_ready()
        yield grid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _pods_ready(grid: LocalGridProcess) -> None:
    """Wait until both workers answered a task (the grid reports ready once its
    control plane serves, and the pods become ready just after)."""
    with Client(grid.address) as client:
        session = client.create_session(TaskOptions(options={"kernel": "echo"}))
        tasks = session.submit([TaskSpec(b"warm") for _ in range(4)])
        session.wait_for_results([task.output for task in tasks], timeout=60)


def test_tasks_run_on_both_pods(local_grid: LocalGridProcess) -> None:
    _pods_ready(local_grid)
    with Client(local_grid.address) as client:
        session = client.create_session(TaskOptions(options={"kernel": "sleep"}))
        # Long enough that one pod cannot take them all before the other one asks.
        tasks = session.submit([TaskSpec(b"0.2") for _ in range(8)])
        session.wait(timeout=60)
        assert {session.result(t.output) for t in tasks} == {b"slept"}
        owners = {session.get_task(t.task_id).owner_pod_id for t in tasks}
    assert owners == {"local-0", "local-1"}


def test_a_killed_worker_is_started_again(
    local_grid: LocalGridProcess, tmp_path: Path
) -> None:
    _pods_ready(local_grid)
    marker = tmp_path / "blocked"
    with Client(local_grid.address) as client:
        session = client.create_session(
            TaskOptions(max_retries=2, options={"kernel": "block-once"})
        )
        (task,) = session.submit([TaskSpec(str(marker).encode())])
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        worker_pid = int(marker.read_text())
        os.kill(worker_pid, signal.SIGKILL)
        session.wait_for_results([task.output], timeout=60)
        assert session.result(task.output) == b"survived"
    assert worker_pid not in _descendants(local_grid.process.pid)


def test_sigterm_stops_every_process(local_grid: LocalGridProcess) -> None:
    _pods_ready(local_grid)
    children = _descendants(local_grid.process.pid)
    assert len(children) >= 4  # two agents and two workers
    local_grid.process.send_signal(signal.SIGTERM)
    assert local_grid.process.wait(30) == 0
    assert not {pid for pid in children if Path(f"/proc/{pid}").exists()}


def test_run_executes_a_client_and_returns_its_status(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        "import os, sys\n"
        "from worker_sdk import TaskOptions\n"
        "from worker_sdk.client import Client, TaskSpec\n"
        "with Client(os.environ['GRIDPOD_CONTROL_PLANE']) as client:\n"
        "    session = client.create_session(TaskOptions(options={'kernel': 'echo'}))\n"
        "    (task,) = session.submit([TaskSpec(b'from --run')])\n"
        "    session.wait_for_results([task.output], timeout=60)\n"
        "    print(session.result(task.output).decode())\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        [
            *(sys.executable, "-m", "agent", "local", "--listen", "127.0.0.1:0"),
            *("--run", f"{sys.executable} {script}"),
            "--",
            *WORKER,
        ],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.decode().strip() == "from --run", done.stderr.decode()[-2000:]
    assert done.returncode == 3


def test_a_worker_command_that_cannot_start_is_reported(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "agent", "local", "--listen", "127.0.0.1:0"),
            "--",
            str(tmp_path / "no-such-program"),
        ],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "no-such-program" in done.stderr.decode()


def test_sigkill_leaves_no_pod_process_behind(local_grid: LocalGridProcess) -> None:
    _pods_ready(local_grid)
    children = _descendants(local_grid.process.pid)
    assert len(children) >= 4
    local_grid.process.kill()
    local_grid.process.wait(10)
    deadline = time.monotonic() + 20
    while alive := {pid for pid in children if _running(pid)}:
        assert time.monotonic() < deadline, f"still running: {alive}"
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _agent(*argv: str, address: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        cwd=REPO,
        env={**os.environ, "GRIDPOD_CONTROL_PLANE": address, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_commands_for_people(local_grid: LocalGridProcess, tmp_path: Path) -> None:
    payloads = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path in payloads:
        path.write_text(f"payload of {path.name}")
    address = local_grid.address
    submitted = _agent(
        "submit", "--kernel", "echo", *map(str, payloads), address=address
    )
    assert submitted.returncode == 0, submitted.stderr
    first, *rows = submitted.stdout.splitlines()
    session_id = first.removeprefix("session ")
    keys = [row.split("\t")[1] for row in rows]
    assert len(keys) == 2

    in_session = {"GRIDPOD_SESSION": session_id}
    waited = _agent("wait", "--timeout", "60", address=address, **in_session)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.split() == ["completed", "2"]

    listed = _agent("tasks", "--json", address=address, **in_session)
    statuses = [json.loads(line)["status"] for line in listed.stdout.splitlines()]
    assert statuses == ["COMPLETED", "COMPLETED"]

    read = _agent("result", keys[1], address=address, **in_session)
    assert read.stdout == "payload of b.txt"

    failing = _agent(
        "submit",
        "--kernel",
        "always-fail",
        "--max-retries",
        "0",
        str(payloads[0]),
        address=address,
        **in_session,
    )
    assert failing.returncode == 0, failing.stderr
    waited = _agent("wait", address=address, **in_session)
    assert waited.returncode == 1
    assert "error\t1" in waited.stdout

    missing = _agent("result", "no-such-key", address=address, **in_session)
    assert missing.returncode != 0
    assert "no-such-key" in missing.stderr


def test_a_long_wait_on_a_terminal_shows_its_progress(
    local_grid: LocalGridProcess,
) -> None:
    _pods_ready(local_grid)
    with Client(local_grid.address) as client:
        session = client.create_session(TaskOptions(options={"kernel": "sleep"}))
        # Long enough that the wait outlasts the command's start and the second
        # it waits before it shows any progress.
        session.submit([TaskSpec(b"2.5") for _ in range(4)])
    controller, terminal = pty.openpty()
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "agent", "wait", "--session", session.session_id],
            cwd=REPO,
            env={**os.environ, "GRIDPOD_CONTROL_PLANE": local_grid.address},
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        out, _ = waiting.communicate(timeout=60)
    finally:
        os.close(terminal)
    shown = b""
    while select.select([controller], [], [], 0.5)[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert waiting.returncode == 0
    assert out.split() == [b"completed", b"4"]
    assert re.search(rb"\[[#.]{30}\] \d/4 final, 0 failed", shown), shown


def test_a_busy_port_is_reported_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        grid = subprocess.Popen(
            [
                *(sys.executable, "-m", "agent", "local"),
                *("--listen", f"127.0.0.1:{port}", "--run", "true"),
                "--",
                *WORKER,
            ],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        children: set[int] = set()
        while grid.poll() is None:
            children |= _descendants(grid.pid)
            time.sleep(0.05)
        _, errors = grid.communicate(timeout=60)
    assert grid.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in errors
    assert not {pid for pid in children if _running(pid)}


def test_pods_poll_only_while_each_has_two_cores_to_itself() -> None:
    assert busy_poll_for(1, cores=2) == 1000
    assert busy_poll_for(2, cores=4) == 1000
    # Two pods' agents and workers on two cores: polling would starve them.
    assert busy_poll_for(2, cores=2) == 0
    assert busy_poll_for(3, cores=4) == 0
