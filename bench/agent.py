"""Benchmark of the agent sidecar against a bare grpc.aio floor, over unix sockets.

``python bench/agent.py [--tasks N] [--payload-mib M] [--quick]`` runs ``agent run``
on a fresh SQLite file beside real worker processes and prints figures and ratios
measured in one run; it asserts nothing and exits 0 when a target is missed, after a
``TARGET MISSED:`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

# Run as a script, this file's folder heads sys.path, where this module would shadow
# the agent package it measures: the repository's root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent._ports import free_port
from agent.backend import (
    Backend,
    BlobRef,
    NewTask,
    ResultStatus,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
    open_backend,
)
from bench._common import (
    MIB,
    REPO,
    TINY_PAYLOAD,
    BenchError,
    Child,
    generated_chunks,
    mib,
    print_header,
    row,
    run_benchmark,
    wait_for_socket,
)
from gridpod_api import objects_pb2

TARGET_RATIO = 0.7
TARGET_AGENT_RSS = 150 * MIB
CONCURRENCY = 8
# Each column's tasks are run in this many rounds, the columns taking turns.
ROUNDS = 3
# Room left on the disk besides the payload's two copies: SQLite's and the worker's.
DISK_MARGIN = 256 * MIB
READY_POLL = 0.005
# Cheap enough not to steal time from the agent: the end time comes from the
# backend's own timestamps, not from when the poll noticed it.
DONE_POLL = 0.1

FLOOR, OURS, OURS_BARE = "floor", "agent+sdk", "agent+bare"
COLUMNS = (FLOOR, OURS, OURS_BARE)


@dataclass(frozen=True, kw_only=True)
class Settings:
    tasks: int
    payload_bytes: int
    chunk_size: int = MIB


def progress(line: str) -> None:
    sys.stdout.flush()  # so that tables and progress keep their order in one log
    print(f"... {line}", file=sys.stderr, flush=True)


def _seconds(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- processes ------------------------------------------------------------------


class Run:
    """The folder of one run: its sockets, logs, state file and the processes."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.worker_socket = folder / "worker.sock"
        self.agent_socket = folder / "agent.sock"
        self.calls = folder / "calls.tsv"
        self.report = folder / "report.json"
        self.health_port = free_port()

    def sdk_worker(self, handler: str) -> Child:
        command = [
            *("-m", "worker_sdk", f"bench.handlers:{handler}"),
            *("--address", f"unix://{self.worker_socket}"),
            *("--agent", f"unix://{self.agent_socket}"),
            *("--spill-dir", str(self.folder)),
        ]
        return Child("the SDK worker", command, self.folder / "worker.log")

    def bare_worker(self, kernel: str) -> Child:
        command = [
            str(REPO / "bench" / "bare_worker.py"),
            *("--address", f"unix:{self.worker_socket}"),
            *("--agent", f"unix:{self.agent_socket}"),
            *("--kernel", kernel),
            *("--calls", str(self.calls)),
        ]
        return Child("the bare worker", command, self.folder / "worker.log")

    def agent(self, backend_url: str, concurrency: int, chunk_size: int) -> Child:
        command = [
            *("-m", "agent", "run", "--backend", backend_url),
            *("--worker", f"unix://{self.worker_socket}"),
            *("--listen", f"unix://{self.agent_socket}"),
            *("--concurrency", str(concurrency)),
            *("--health-port", str(self.health_port)),
            *("--chunk-size", str(chunk_size)),
            *("--agent-id", "bench"),
        ]
        return Child("the agent", command, self.folder / "agent.log")

    def bare_agent(
        self, tasks: int, concurrency: int, payload_bytes: int, chunk_size: int
    ) -> Child:
        command = [
            str(REPO / "bench" / "bare_agent.py"),
            *("--listen", str(self.agent_socket)),
            *("--worker", str(self.worker_socket)),
            *("--tasks", str(tasks)),
            *("--concurrency", str(concurrency)),
            *("--payload-bytes", str(payload_bytes)),
            *("--chunk-size", str(chunk_size)),
            *("--report", str(self.report)),
        ]
        return Child("the bare agent", command, self.folder / "agent.log")

    def read_calls(self) -> dict[str, tuple[float, float]]:
        """When each Process call reached the bare worker and when it left it."""
        if not self.calls.exists():
            raise BenchError(f"the bare worker wrote no {self.calls.name}")
        calls = {}
        for line in self.calls.read_text().splitlines():
            task_id, entered, left = line.split("\t")
            calls[task_id] = (float(entered), float(left))
        return calls


class RunFolders:
    """Hands out a fresh folder per run inside the benchmark's temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._count = 0

    def new(self, name: str) -> Run:
        self._count += 1
        return Run(self.root / f"{self._count}-{name}")


async def http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
    except OSError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 else None


async def wait_ready(run: Run, children: Sequence[Child], timeout: float) -> float:
    """The wall-clock time at which /readyz first answered 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.check_alive()
        if await http_status(run.health_port, "/readyz") == 200:
            return time.time()
        await asyncio.sleep(READY_POLL)
    raise BenchError(f"the agent was not ready within {timeout} s")


@dataclass(frozen=True)
class Pod:
    agent: Child
    worker: Child
    ready_at: float  # wall clock, as the backend's timestamps

    def check_alive(self) -> None:
        self.agent.check_alive()
        self.worker.check_alive()


@contextlib.asynccontextmanager
async def pod(run: Run, agent: Child, worker: Child) -> AsyncIterator[Pod]:
    """The worker, then the agent beside it, until the agent is ready."""
    try:
        worker.start()
        await wait_for_socket(run.worker_socket, worker, timeout=30.0)
        agent.start()
        ready_at = await wait_ready(run, (agent, worker), timeout=60.0)
        yield Pod(agent, worker, ready_at)
    finally:
        await agent.stop()
        await worker.stop()


# --- the backend's side ---------------------------------------------------------


async def _chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def kernel_options(kernel: str) -> objects_pb2.TaskOptions:
    options = objects_pb2.TaskOptions()
    options.options["kernel"] = kernel
    return options


async def submit(
    backend: Backend, blob: BlobRef, tasks: int, kernel: str
) -> list[TaskRecord]:
    """``tasks`` tasks on ``blob`` in a new session, in one submit_tasks batch."""
    session = await backend.create_session(kernel_options(kernel), [""])
    new = [NewTask(blob, (f"out-{number}",)) for number in range(tasks)]
    created = await backend.submit_tasks(session.session_id, new)
    refused = [item for item in created if isinstance(item, TaskRefusal)]
    if refused:
        raise BenchError(f"{len(refused)} task(s) refused: {refused[0].reason}")
    return [item for item in created if isinstance(item, TaskRecord)]


def result_counts(db_path: Path, session_id: str) -> dict[int, int]:
    """The session's results by status, in one query on a read-only connection."""
    uri = f"{db_path.as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(
            "SELECT status, count(*) FROM results WHERE session_id = ? GROUP BY status",
            (session_id,),
        ).fetchall()
    return dict(rows)


async def wait_results(
    db_path: Path, session_id: str, count: int, pod: Pod, timeout: float
) -> None:
    """Return once ``count`` results of the session are COMPLETED."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod.check_alive()
        counts = result_counts(db_path, session_id)
        if counts.get(ResultStatus.ABORTED):
            raise BenchError(f"{counts[ResultStatus.ABORTED]} result(s) aborted")
        if counts.get(ResultStatus.COMPLETED, 0) >= count:
            return
        await asyncio.sleep(DONE_POLL)
    raise BenchError(f"{count} results not COMPLETED within {timeout} s")


async def final_records(
    backend: Backend, records: Sequence[TaskRecord]
) -> list[TaskRecord]:
    """Every task as stored now, each checked COMPLETED."""
    final = [await backend.get_task(record.task_id) for record in records]
    for record in final:
        if record.status != TaskStatus.COMPLETED:
            raise BenchError(f"task {record.task_id} ended {record.status.name}")
    return final


# --- empty tasks ----------------------------------------------------------------


@dataclass(frozen=True)
class EmptyRun:
    """Our agent's run of empty tasks: its records and when the clock started."""

    records: list[TaskRecord]
    started: float
    agent_cpu: float
    agent_peak: int
    calls: dict[str, tuple[float, float]]

    @property
    def tasks(self) -> int:
        return len(self.records)

    @property
    def rate(self) -> float:
        ended = max(_seconds(record.ended_at) for record in self.records)
        return len(self.records) / (ended - self.started)


@dataclass(frozen=True)
class FloorRun:
    """The bare agent's run, as it reported it, and the bare worker's figures."""

    rate: float
    latencies: list[float]
    agent_cpu: float
    agent_peak: int
    first_value: str
    worker_peak: int
    calls: dict[str, tuple[float, float]]

    @property
    def tasks(self) -> int:
        return len(self.latencies)


async def agent_empty_run(
    run: Run, settings: Settings, concurrency: int, tasks: int, *, sdk: bool
) -> EmptyRun:
    db_path = run.folder / "state.db"
    url = f"sqlite://{db_path}"
    backend = open_backend(url)
    try:
        blob = await backend.write_blob(_chunks([TINY_PAYLOAD]))
        records = await submit(backend, blob, tasks, "empty")
        worker = run.sdk_worker("Empty") if sdk else run.bare_worker("empty")
        agent = run.agent(url, concurrency, settings.chunk_size)
        async with pod(run, agent, worker) as running:
            cpu = agent.cpu_seconds()
            timeout = 60 + tasks / 20
            session_id = records[0].session_id
            await wait_results(db_path, session_id, len(records), running, timeout)
            cpu = agent.cpu_seconds() - cpu
            peak = agent.memory_bytes("VmHWM")
        final = await final_records(backend, records)
    finally:
        await backend.close()
    # /readyz turns 200 once the agent's worker passed its health check, just before
    # the first acquire; the poll sees it up to a poll late, the first acquired_at
    # (the backend's clock: the same host clock) at most one hop late. The earlier
    # of the two is the closer to readiness.
    first = min(_seconds(record.acquired_at) for record in final)
    calls = run.read_calls() if not sdk else {}
    return EmptyRun(final, min(running.ready_at, first), cpu, peak, calls)


async def floor_run(
    run: Run,
    settings: Settings,
    concurrency: int,
    *,
    tasks: int,
    payload_bytes: int = 0,
    kernel: str = "empty",
) -> FloorRun:
    worker = run.bare_worker(kernel)
    agent = run.bare_agent(tasks, concurrency, payload_bytes, settings.chunk_size)
    try:
        worker.start()
        await wait_for_socket(run.worker_socket, worker, timeout=30.0)
        agent.start()
        code = await agent.wait(timeout=600.0)
        if code != 0:
            raise BenchError(f"the bare agent exited with {code}:\n{agent.log_tail()}")
        worker_peak = worker.memory_bytes("VmHWM")
    finally:
        await agent.stop()
        await worker.stop()
    report = json.loads(run.report.read_text())
    if report["results"] != tasks:
        raise BenchError(f"the bare agent got {report['results']} of {tasks} results")
    return FloorRun(
        rate=tasks / report["elapsed"],
        latencies=report["latencies"],
        agent_cpu=report["cpu"],
        agent_peak=report["peak_rss"],
        first_value=report["first_value"],
        worker_peak=worker_peak,
        calls=run.read_calls(),
    )


_Run = TypeVar("_Run", FloorRun, EmptyRun)


@dataclass(frozen=True)
class Column(Generic[_Run]):
    """One column's runs at one concurrency, each made in a round of its own."""

    runs: list[_Run]

    @property
    def tasks(self) -> int:
        return sum(run.tasks for run in self.runs)

    @property
    def rate(self) -> float:
        return self.tasks / sum(run.tasks / run.rate for run in self.runs)

    @property
    def agent_cpu(self) -> float:
        return sum(run.agent_cpu for run in self.runs)

    @property
    def agent_peak(self) -> int:
        return max(run.agent_peak for run in self.runs)


@dataclass
class EmptyFigures:
    floor: dict[int, Column[FloorRun]]
    ours: dict[int, Column[EmptyRun]]
    ours_bare: dict[int, Column[EmptyRun]]

    def at(self, concurrency: int) -> tuple[Column[FloorRun] | Column[EmptyRun], ...]:
        """The columns at ``concurrency``, in the order of ``COLUMNS``."""
        return (
            self.floor[concurrency],
            self.ours[concurrency],
            self.ours_bare[concurrency],
        )


def round_sizes(tasks: int) -> list[int]:
    """The tasks of each round: ``tasks`` split in up to ``ROUNDS`` parts of at
    least two tasks (a sequential run's cycles need two)."""
    rounds = max(1, min(ROUNDS, tasks // 2))
    return [tasks // rounds + (1 if n < tasks % rounds else 0) for n in range(rounds)]


async def empty_tasks(settings: Settings, runs: RunFolders) -> EmptyFigures:
    """Each concurrency's three columns in interleaved rounds, so that a drift of
    the machine's speed during the runs weighs on every column alike."""
    figures = EmptyFigures({}, {}, {})
    for concurrency in (1, CONCURRENCY):
        label = "sequential" if concurrency == 1 else f"{concurrency} in flight"
        floor: list[FloorRun] = []
        ours: list[EmptyRun] = []
        ours_bare: list[EmptyRun] = []
        sizes = round_sizes(settings.tasks)
        for number, tasks in enumerate(sizes, 1):
            step = f"empty tasks, {label}, round {number} of {len(sizes)}"
            progress(f"{step}: {FLOOR}")
            folder = runs.new(f"floor-c{concurrency}")
            floor.append(await floor_run(folder, settings, concurrency, tasks=tasks))
            for sdk, column in ((True, ours), (False, ours_bare)):
                progress(f"{step}: {OURS if sdk else OURS_BARE}")
                folder = runs.new(f"{'sdk' if sdk else 'bare'}-c{concurrency}")
                column.append(
                    await agent_empty_run(folder, settings, concurrency, tasks, sdk=sdk)
                )
        figures.floor[concurrency] = Column(floor)
        figures.ours[concurrency] = Column(ours)
        figures.ours_bare[concurrency] = Column(ours_bare)
    return figures


# --- per-task overhead ----------------------------------------------------------

# How the agent's own time per task is measured, in a sequential run with the bare
# worker, which records when each Process call reached it and when its reply left.
# From one call reaching the worker to the next is one whole task as the agent
# handles it; the call itself is the worker's (and the SendResult it makes, which the
# agent serves: storing the value and staging it shows as the call taking longer
# than the floor's). The gap from a reply leaving the worker to the next call
# reaching it is the agent's own time per task: the reply's way back, the next task
# from the read-ahead queue, building its stream and the way to the worker. The
# agent's backend calls (commit, start, the next acquire) are made while the worker
# computes, so they count in the gap only as far as they hold the agent back.
# Timestamps of the two processes compare: both read the host's one wall clock. The
# cycle of the SDK worker's run counts from one started_at (the backend's clock) to
# the next, which is recorded once the worker has the task's first request.


@dataclass(frozen=True)
class Phases:
    cycle: list[float]
    call: list[float]
    gap: list[float]

    def extend(self, other: Phases) -> None:
        self.cycle.extend(other.cycle)
        self.call.extend(other.call)
        self.gap.extend(other.gap)


def sequential_phases(sample: EmptyRun) -> Phases:
    calls = sorted(sample.calls.values())
    phases = Phases([], [], [])
    for (entered, left), (following, _) in itertools.pairwise(calls):
        phases.cycle.append(following - entered)
        phases.call.append(left - entered)
        phases.gap.append(following - left)
    return phases


def cycles(sample: EmptyRun) -> list[float]:
    starts = sorted(_seconds(record.started_at) for record in sample.records)
    return [b - a for a, b in itertools.pairwise(starts)]


def floor_beyond_call(floor: FloorRun) -> tuple[list[float], list[float]]:
    """The bare worker's time per call, and the rest of each call's latency."""
    calls = [floor.calls[f"task-{number}"] for number in range(len(floor.latencies))]
    inside = [left - entered for entered, left in calls]
    return inside, [t - k for t, k in zip(floor.latencies, inside, strict=True)]


# --- payload streaming ----------------------------------------------------------


@dataclass(frozen=True)
class PayloadRun:
    seconds: float
    agent_peak: int
    worker_peak: int


async def store_payload(
    backend: Backend, size: int, chunk_size: int
) -> tuple[BlobRef, bytes]:
    """The payload's blob, written chunk by chunk, and its checksum."""
    crc = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal crc
        for chunk in generated_chunks(size, chunk_size):
            crc = zlib.crc32(chunk, crc)
            yield chunk

    blob = await backend.write_blob(chunks())
    return blob, b"%08x" % crc


async def wait_final(backend: Backend, task_id: str, pod: Pod) -> TaskRecord:
    deadline = time.monotonic() + 600.0
    while time.monotonic() < deadline:
        pod.check_alive()
        record = await backend.get_task(task_id)
        if record.status.is_final:
            return record
        await asyncio.sleep(DONE_POLL / 2)
    raise BenchError(f"task {task_id} did not end within 600 s")


async def agent_payload_run(
    run: Run,
    settings: Settings,
    backend: Backend,
    url: str,
    stored: tuple[BlobRef, bytes],
    sdk: bool,
) -> PayloadRun:
    blob, expected = stored
    [task] = await submit(backend, blob, 1, "crc32")
    worker = run.sdk_worker("Checksum") if sdk else run.bare_worker("crc32")
    agent = run.agent(url, 1, settings.chunk_size)
    async with pod(run, agent, worker) as running:
        record = await wait_final(backend, task.task_id, running)
        agent_peak = agent.memory_bytes("VmHWM")
        worker_peak = worker.memory_bytes("VmHWM")
    if record.status != TaskStatus.COMPLETED:
        raise BenchError(f"the payload task ended {record.status.name}")
    value = b"".join([c async for c in backend.read_result(task.session_id, "out-0")])
    if value != expected:
        raise BenchError(f"{run.folder.name}: wrong checksum {value!r}")
    # From PROCESSING to COMPLETED, both on the backend's clock.
    seconds = _seconds(record.ended_at) - _seconds(record.started_at)
    return PayloadRun(seconds, agent_peak, worker_peak)


def payload_size(directory: Path, wanted: int) -> int:
    """``wanted``, or what the disk holds twice over, with a note when less."""
    free = shutil.disk_usage(directory).free
    room = (free - DISK_MARGIN) // 2 // MIB * MIB
    if room >= wanted:
        return wanted
    print(
        f"note: {mib(free)} free on the disk: the payload is {mib(max(room, 0))}, "
        f"not {mib(wanted)} (SQLite and the SDK worker each hold a copy)"
    )
    return max(room, 0)


async def payload_streaming(
    settings: Settings, runs: RunFolders, size: int
) -> dict[str, PayloadRun]:
    state = runs.new("payload-state")
    url = f"sqlite://{state.folder / 'state.db'}"
    backend = open_backend(url)
    try:
        progress(f"payload of {mib(size)}: storing it in SQLite")
        started = time.perf_counter()
        stored = await store_payload(backend, size, settings.chunk_size)
        progress(f"  stored in {time.perf_counter() - started:.1f} s")
        progress(f"payload of {mib(size)}: {FLOOR}")
        samples = {FLOOR: await floor_payload_run(runs, settings, size, stored[1])}
        for name, sdk in ((OURS, True), (OURS_BARE, False)):
            progress(f"payload of {mib(size)}: {name}")
            samples[name] = await agent_payload_run(
                runs.new(f"{name}-payload"), settings, backend, url, stored, sdk
            )
    finally:
        await backend.close()
    return samples


async def floor_payload_run(
    runs: RunFolders, settings: Settings, size: int, expected: bytes
) -> PayloadRun:
    run = runs.new("floor-payload")
    floor = await floor_run(
        run, settings, 1, tasks=1, payload_bytes=size, kernel="crc32"
    )
    if floor.first_value != expected.decode():
        raise BenchError(f"the floor sent a wrong checksum {floor.first_value!r}")
    return PayloadRun(floor.latencies[0], floor.agent_peak, floor.worker_peak)


# --- report ---------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value * 1000:.3f}"


def _columns(label: str, cells: Iterable[str]) -> str:
    return row(label, cells, width=14, label_width=30)


def _quantiles(label: str, values: Sequence[float]) -> str:
    cells = (_ms(percentile(values, 0.5)), _ms(percentile(values, 0.99)))
    return row(label, cells, width=10, label_width=48)


def report_empty(settings: Settings, figures: EmptyFigures) -> list[str]:
    rounds = len(round_sizes(settings.tasks))
    print(
        f"empty tasks: {settings.tasks:,} per column in {rounds} rounds, the columns "
        "taking turns, each round's submitted in one batch;"
    )
    print(
        "  tasks/s from the agent's readiness (/readyz) to its last commit (the last "
        "ended_at, once a read-only SQL count"
    )
    print("  finds every result COMPLETED), the rounds' tasks over their time")
    print(
        f"  ({FLOOR}: bare agent -> bare worker, no backend; {OURS}: agent run -> "
        f"python -m worker_sdk; {OURS_BARE}: agent run -> bare worker)"
    )
    print(_columns("", COLUMNS))
    missed = []
    for concurrency in (1, CONCURRENCY):
        label = "sequential" if concurrency == 1 else f"{concurrency} in flight"
        samples = figures.at(concurrency)
        floor = samples[0].rate
        print(_columns(f"tasks/s, {label}", (f"{s.rate:.0f}" for s in samples)))
        ratios = ["-", *(f"{s.rate / floor:.2f}" for s in samples[1:])]
        print(_columns(f"ratio to floor, {label}", ratios))
        cpu = (f"{s.agent_cpu / s.tasks * 1e6:.0f}" for s in samples)
        print(_columns(f"agent CPU/task (us), {label}", cpu))
        if samples[1].rate / floor < TARGET_RATIO:
            missed.append(
                f"TARGET MISSED: empty tasks, {label}: {OURS}/{FLOOR} = "
                f"{samples[1].rate / floor:.2f} < {TARGET_RATIO}"
            )
    peaks = (mib(s.agent_peak) for s in figures.at(CONCURRENCY))
    print(_columns(f"agent peak RSS, {CONCURRENCY} in flight", peaks))
    return missed


def report_overhead(figures: EmptyFigures) -> None:
    floor_runs = figures.floor[1].runs
    latencies = [value for run in floor_runs for value in run.latencies]
    phases = Phases([], [], [])
    for run in figures.ours_bare[1].runs:
        phases.extend(sequential_phases(run))
    floor_inside: list[float] = []
    floor_beyond: list[float] = []
    for floor in floor_runs:
        inside, beyond = floor_beyond_call(floor)
        floor_inside += inside
        floor_beyond += beyond
    ours = [cycle for run in figures.ours[1].runs for cycle in cycles(run)]
    print()
    print("per task, sequential (ms; the method is described in bench/agent.py)")
    print(row("", ("p50", "p99"), width=10, label_width=48))
    print(_quantiles(f"{FLOOR}: one task (the Process call)", latencies))
    print(_quantiles(f"{OURS}: one task (start to next start)", ours))
    print(_quantiles(f"{OURS_BARE}: one task (call to next call)", phases.cycle))
    print(_quantiles(f"{FLOOR}: the call, inside the bare worker", floor_inside))
    print(_quantiles(f"{OURS_BARE}: the call, inside the bare worker", phases.call))
    gap = phases.gap
    print(_quantiles(f"{OURS_BARE}: the agent's time between calls", gap))
    print(_quantiles(f"{FLOOR}: beyond the call (client, transport)", floor_beyond))
    overhead, whole = percentile(gap, 0.5), percentile(latencies, 0.5)
    print(
        f"  the agent's own time per task, p50 {_ms(overhead)} ms, is "
        f"{overhead / whole:.0%} of the floor's whole task ({_ms(whole)} ms)"
    )


def report_payload(size: int, samples: dict[str, PayloadRun]) -> list[str]:
    print()
    print(
        f"payload of {mib(size)} in 1 MiB chunks, one task; MB/s from PROCESSING to "
        "COMPLETED (floor: the Process call)"
    )
    print(_columns("", COLUMNS))
    runs = [samples[name] for name in COLUMNS]
    print(_columns("MB/s", (f"{size / s.seconds / 1e6:.0f}" for s in runs)))
    floor = samples[FLOOR].seconds
    print(
        _columns(
            "ratio to floor", ["-", *(f"{floor / s.seconds:.2f}" for s in runs[1:])]
        )
    )
    print(_columns("agent peak RSS (VmHWM)", (mib(s.agent_peak) for s in runs)))
    print(_columns("worker peak RSS (VmHWM)", (mib(s.worker_peak) for s in runs)))
    return [
        f"TARGET MISSED: payload of {mib(size)}: the agent's peak RSS with {name} "
        f"was {mib(samples[name].agent_peak)} (limit {mib(TARGET_AGENT_RSS)})"
        for name in (OURS, OURS_BARE)
        if samples[name].agent_peak >= TARGET_AGENT_RSS
    ]


# --- main -----------------------------------------------------------------------


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="empty tasks per run")
    parser.add_argument("--payload-mib", type=int, help="size of the big payload")
    parser.add_argument(
        "--quick", action="store_true", help="1,000 tasks and 64 MiB: under 45 s"
    )
    args = parser.parse_args(argv)
    tasks = (1000 if args.quick else 10_000) if args.tasks is None else args.tasks
    mebibytes = (
        (64 if args.quick else 1024) if args.payload_mib is None else args.payload_mib
    )
    if tasks < 2 or mebibytes < 1:
        parser.error("--tasks must be at least 2 and --payload-mib positive")
    return Settings(tasks=tasks, payload_bytes=mebibytes * MIB)


async def run(settings: Settings) -> list[str]:
    root = Path(tempfile.mkdtemp(prefix="gridpod-bench-agent-"))
    runs = RunFolders(root)
    try:
        figures = await empty_tasks(settings, runs)
        missed = report_empty(settings, figures)
        report_overhead(figures)
        size = payload_size(root, settings.payload_bytes)
        if size < MIB:
            print("note: no room on the disk for the payload: not streamed")
            return missed
        streamed = await payload_streaming(settings, runs, size)
        return missed + report_payload(size, streamed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    settings = parse_settings()
    print_header("agent", f", SQLite {sqlite3.sqlite_version}")
    run_benchmark(run(settings))


if __name__ == "__main__":
    main()
