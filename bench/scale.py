"""Benchmark of the Redis backend: empty tasks through 1, 2 and 4 pods on one Redis,
beside one pod on the embedded backend, measured in the same run.

``python bench/scale.py [--tasks N] [--pods 1,2,4] [--quick]`` starts its own
redis-server on a free port and real ``agent run`` and SDK worker processes, and
prints tasks per second, the scaling efficiency (the rate of k pods over k times
the rate of one), the Redis round trips each agent waited for per task (from its
``gridpod_redis_round_trips`` metric) and the commands Redis executed per task. It
asserts nothing and exits 0 when a target is missed, after a ``TARGET MISSED:``
line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder heads sys.path, where this module would shadow
# the agent package it measures: the repository's root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent._ports import free_port
from agent.backend import (
    Backend,
    EventKind,
    NewTask,
    TaskRefusal,
    TaskStatus,
    open_backend,
)
from bench._common import (
    TINY_PAYLOAD,
    BenchError,
    Child,
    print_header,
    row,
    run_benchmark,
    wait_for_socket,
)
from bench.agent import _chunks, http_status, kernel_options
from bench.end_to_end import redis_server, wait_redis

TARGET_RATIO = 0.8
TARGET_ROUND_TRIPS = 4.0
READY_POLL = 0.01
DONE_POLL = 0.05
EMBEDDED = "embedded"


@dataclass(frozen=True, kw_only=True)
class Settings:
    tasks: int
    pods: tuple[int, ...]


@dataclass(frozen=True)
class Sample:
    """One run: how many tasks per second, and what the backend was asked."""

    rate: float
    agent_cpu: float
    redis_cpu: float | None = None
    round_trips: float | None = None
    commands: float | None = None


def progress(line: str) -> None:
    sys.stdout.flush()
    print(f"... {line}", file=sys.stderr, flush=True)


class PodProcesses:
    """One agent and its SDK worker, in a folder of their own."""

    def __init__(self, folder: Path, name: str, backend_url: str) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.worker_socket = folder / "worker.sock"
        self.health_port = free_port()
        self.worker = Child(
            f"worker {name}",
            [
                *("-m", "worker_sdk", "bench.handlers:Empty"),
                *("--address", f"unix://{self.worker_socket}"),
                *("--agent", f"unix://{folder / 'agent.sock'}"),
            ],
            folder / "worker.log",
        )
        self.agent = Child(
            f"agent {name}",
            [
                *("-m", "agent", "run", "--backend", backend_url),
                *("--worker", f"unix://{self.worker_socket}"),
                *("--listen", f"unix://{folder / 'agent.sock'}"),
                *("--health-port", str(self.health_port)),
                *("--agent-id", name),
            ],
            folder / "agent.log",
        )

    async def start(self) -> None:
        self.worker.start()
        await wait_for_socket(self.worker_socket, self.worker, timeout=30.0)
        self.agent.start()
        deadline = time.monotonic() + 60
        while await http_status(self.health_port, "/readyz") != 200:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.agent.name} was not ready within 60 s")
            await asyncio.sleep(READY_POLL)

    def check_alive(self) -> None:
        self.agent.check_alive()
        self.worker.check_alive()

    def round_trips(self) -> float:
        """The agent's ``gridpod_redis_round_trips_total`` so far."""
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith("gridpod_redis_round_trips_total "):
                return float(line.split()[1])
        return 0.0

    async def stop(self) -> None:
        await self.agent.stop()
        await self.worker.stop()


@contextlib.asynccontextmanager
async def running_pods(
    folder: Path, count: int, backend_url: str
) -> AsyncIterator[list[PodProcesses]]:
    pods = [
        PodProcesses(folder / f"pod-{n}", f"pod-{n}", backend_url) for n in range(count)
    ]
    try:
        await asyncio.gather(*(pod.start() for pod in pods))
        yield pods
    finally:
        await asyncio.gather(*(pod.stop() for pod in pods))


async def completed_events(
    backend: Backend, session_id: str, tasks: int, pods: Sequence[PodProcesses]
) -> None:
    """Return once the session's log says ``tasks`` tasks COMPLETED: the log is
    read on from where it was, so the wait costs what changed."""
    after, done = 0, 0
    deadline = time.monotonic() + 120 + tasks / 20
    while done < tasks:
        for pod in pods:
            pod.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"only {done} of {tasks} tasks completed in time")
        events = await backend.read_events(after, session_id=session_id, limit=5000)
        for event in events:
            if event.kind == EventKind.TASK_STATUS:
                done += event.status == TaskStatus.COMPLETED
        if events:
            after = events[-1].seq
        else:
            await asyncio.sleep(DONE_POLL)


async def redis_commands(port: int) -> int:
    """Commands the server ran for clients (not those inside functions), from
    INFO: the sum of its per-command calls, minus what functions called."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"INFO stats\r\n")
        await writer.drain()
        header = await reader.readline()
        body = await reader.readexactly(int(header[1:]) + 2)
    finally:
        writer.close()
    for line in body.decode().splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    raise BenchError("INFO stats had no total_commands_processed")


async def one_run(
    folder: Path, url: str, settings: Settings, pods: int, redis: Child | None = None
) -> Sample:
    """``settings.tasks`` empty tasks queued, then ``pods`` pods draining them;
    CPU times are per task, in seconds."""
    backend = open_backend(url)
    try:
        session_id = await queue_empty_tasks(backend, settings.tasks)
        async with running_pods(folder, pods, url) as running:
            trips_before = sum(pod.round_trips() for pod in running)
            port = _port(url)
            commands_before = await redis_commands(port) if port else 0
            agent_cpu = sum(pod.agent.cpu_seconds() for pod in running)
            redis_cpu = redis.cpu_seconds() if redis else 0.0
            started = time.perf_counter()
            await completed_events(backend, session_id, settings.tasks, running)
            elapsed = time.perf_counter() - started
            agent_cpu = sum(pod.agent.cpu_seconds() for pod in running) - agent_cpu
            redis_cpu = (redis.cpu_seconds() - redis_cpu) if redis else 0.0
            trips = sum(pod.round_trips() for pod in running) - trips_before
            commands = (await redis_commands(port) - commands_before) if port else 0
    finally:
        await backend.close()
    tasks = settings.tasks
    rate, agent_cpu = tasks / elapsed, agent_cpu / tasks
    if not port:
        return Sample(rate, agent_cpu)
    return Sample(rate, agent_cpu, redis_cpu / tasks, trips / tasks, commands / tasks)


async def queue_empty_tasks(backend: Backend, tasks: int) -> str:
    """A new session with ``tasks`` empty tasks, their payload stored beside the
    session's records as a control plane stores it."""
    session = await backend.create_session(kernel_options("empty"), [""])
    session_id = session.session_id
    blob = await backend.write_blob(_chunks([TINY_PAYLOAD]), session_id=session_id)
    new = [NewTask(blob, (f"out-{number}",)) for number in range(tasks)]
    created = await backend.submit_tasks(session_id, new)
    refused = [item for item in created if isinstance(item, TaskRefusal)]
    if refused:
        raise BenchError(f"{len(refused)} task(s) refused: {refused[0].reason}")
    return session_id


def _port(url: str) -> int | None:
    if not url.startswith("redis://"):
        return None
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


async def measure(settings: Settings, root: Path) -> dict[str, Sample]:
    samples: dict[str, Sample] = {}
    port = free_port()
    redis = redis_server(root, port)
    redis.start()
    try:
        await wait_redis(port, redis)
        for number, pods in enumerate(settings.pods):
            # The embedded pod runs just before the first Redis run, so that both
            # share the machine's mood of the moment.
            if number == 0:
                progress(f"{settings.tasks} empty tasks, 1 pod, embedded backend")
                url = f"sqlite://{root / 'state.db'}"
                samples[EMBEDDED] = await one_run(root / "embedded", url, settings, 1)
            progress(f"{settings.tasks} empty tasks, {pods} pod(s), Redis")
            url = f"redis://127.0.0.1:{port}/0?prefix=run{number}"
            samples[str(pods)] = await one_run(
                root / f"redis-{pods}", url, settings, pods, redis
            )
    finally:
        await redis.stop()
    return samples


def report(settings: Settings, samples: dict[str, Sample]) -> list[str]:
    print_header("Redis backend")
    print(
        f"empty tasks: {settings.tasks} queued in one batch, then drained; every "
        f"process shares the machine's {os.cpu_count()} cores"
    )
    one = samples[str(settings.pods[0])].rate / settings.pods[0]
    print(
        row(
            "backend, pods",
            ["tasks/s", "scaling", "agent CPU", "Redis CPU", "round trips", "commands"],
            width=13,
        )
    )
    embedded = samples[EMBEDDED]
    print(
        row(
            "embedded, 1",
            [f"{embedded.rate:,.0f}", "", _ms(embedded.agent_cpu)],
            width=13,
        )
    )
    for pods in settings.pods:
        sample = samples[str(pods)]
        print(
            row(
                f"redis, {pods}",
                [
                    f"{sample.rate:,.0f}",
                    f"{sample.rate / (pods * one):.2f}",
                    _ms(sample.agent_cpu),
                    _ms(sample.redis_cpu or 0.0),
                    f"{sample.round_trips or 0:.2f}",
                    f"{sample.commands or 0:.1f}",
                ],
                width=13,
            )
        )
    ratio = samples[str(settings.pods[0])].rate / embedded.rate
    print(row("redis 1 pod / embedded", [f"{ratio:.2f}"], width=13))
    print(
        "  (CPU per task, all agents together; round trips: requests each agent "
        "waited for, per task; commands: what Redis ran per task, those inside its "
        "functions included)"
    )
    missed = []
    if settings.pods[0] == 1 and ratio < TARGET_RATIO:
        missed.append(
            f"one pod on Redis runs {ratio:.2f} of one on the embedded backend "
            f"(target {TARGET_RATIO})"
        )
    worst = max(samples[str(p)].round_trips or 0.0 for p in settings.pods)
    if worst > TARGET_ROUND_TRIPS:
        missed.append(
            f"{worst:.2f} Redis round trips per task (target {TARGET_ROUND_TRIPS})"
        )
    return missed


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--pods", default="1,2,4", help="pod counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    pods = tuple(int(n) for n in args.pods.split(","))
    if args.quick:
        return Settings(tasks=300, pods=(1, 2))
    return Settings(tasks=args.tasks, pods=pods)


async def run(settings: Settings) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="gridpod-scale-") as folder:
        samples = await measure(settings, Path(folder))
    return report(settings, samples)


def main() -> None:
    run_benchmark(run(parse_settings()))


if __name__ == "__main__":
    main()
