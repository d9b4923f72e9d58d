"""Benchmark of our grid end to end, from a client's submission to its results, beside
Celery on Redis on the same machine in the same run.

``python bench/end_to_end.py [--tasks N] [--samples N] [--quick]`` runs ``agent
local`` with one worker, two workers and one worker at concurrency 8, and a Celery
worker with the solo pool on a private redis-server; it prints figures and ratios,
asserts nothing, and exits 0 when a target is missed, after a ``TARGET MISSED:``
line. It also runs the transport floor of ``bench/agent.py`` (a bare grpc.aio agent
and worker making the protocol's two calls per task, with no backend and no control
plane), which bounds what any grid speaking the protocol through grpc.aio can do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import TypeVar

# Run as a script, this file's folder heads sys.path, where this module's siblings
# would shadow the packages it measures: the repository's root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent._ports import free_port
from bench import agent as agent_bench
from bench._common import BenchError, Child, print_header, row, run_benchmark
from bench.bare_control import bare_call_latencies
from worker_sdk import TaskOptions
from worker_sdk.client import AsyncClient, AsyncSession, ClientError, TaskSpec
from worker_sdk.client import TaskStatus as ClientTaskStatus

BATCH_SIZE = 500
STREAMS = 16
WARM_UP_TASKS = 20
READY_TIMEOUT = 60.0
READY_POLL = 0.02
EMPTY_KERNEL = TaskOptions(options={"kernel": "empty"})
OUR_VALUE = b"ok"

TARGET_ONE_WORKER = 1.0
TARGET_SCALED = 1.5
TARGET_P50 = 0.005
TARGET_READS = 2000.0

CELERY = "celery"
CONTROL_PLANE, AGENTS, WORKERS, CLIENT = "control plane", "agents", "workers", "client"
REDIS, CELERY_WORKER = "redis-server", "celery worker"

# Runs the command in its arguments, so that a program other than Python gets the
# launcher of bench._common, and dies with the benchmark, as Python children do.
_EXEC = "import os, sys; os.execvp(sys.argv[1], sys.argv[1:])"
_ANNOUNCE = re.compile(r"control plane on (\S+); Ctrl-C stops the grid")

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class Settings:
    tasks: int
    samples: int
    streams: int = STREAMS


@dataclass(frozen=True)
class Shape:
    """One configuration of ``agent local``."""

    label: str
    workers: int
    concurrency: int


ONE_WORKER = Shape("1 worker", 1, 1)
SHAPES = (ONE_WORKER, Shape("2 workers", 2, 1), Shape("1 worker, c8", 1, 8))


@dataclass(frozen=True)
class Throughput:
    tasks: int
    submit_seconds: float
    seconds: float
    cpu: dict[str, float]  # CPU seconds of each kind of process over the run

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


@dataclass(frozen=True)
class Latencies:
    phases: dict[str, list[float]]  # seconds of each phase, sample by sample
    # Spans of the same samples by the backend's timestamps, inside the phases.
    inside: dict[str, list[float]] = field(default_factory=dict)

    @property
    def whole(self) -> list[float]:
        return [sum(sample) for sample in zip(*self.phases.values(), strict=True)]


@dataclass
class Figures:
    """What one system did: its throughput, latencies and result reads."""

    throughput: Throughput
    latencies: Latencies
    reads: dict[int, float] = field(default_factory=dict)  # streams -> results/s


def progress(line: str) -> None:
    sys.stdout.flush()  # so that tables and progress keep their order in one log
    print(f"... {line}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- processes and their CPU ----------------------------------------------------


def _stat(pid: int) -> list[str]:
    # The fields after the command's name, which may hold spaces and parentheses.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[tuple[int, str]]:
    """Every process below ``root``, as its pid and its start time."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat(int(entry.name))
                children.setdefault(int(fields[1]), []).append(
                    (int(entry.name), fields[19])
                )
    found, parents = [], [root]
    while parents:
        below = children.get(parents.pop(), [])
        found += below
        parents += [pid for pid, _ in below]
    return found


def kill_left_over(processes: Iterable[tuple[int, str]]) -> None:
    """SIGKILL those still running: the very ones, same pid and same start time."""
    for pid, started in processes:
        with contextlib.suppress(OSError, IndexError):
            if _stat(pid)[19] == started:
                os.kill(pid, signal.SIGKILL)


def _role(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return AGENTS if argv[1:4] == [b"-m", b"agent", b"run"] else WORKERS


def grid_cpu(grid_pid: int) -> dict[str, float]:
    """CPU seconds so far of the control plane and of the pods' processes."""
    totals = {CONTROL_PLANE: cpu_seconds(grid_pid), AGENTS: 0.0, WORKERS: 0.0}
    for pid, _ in descendants(grid_pid):
        with contextlib.suppress(OSError):
            totals[_role(pid)] += cpu_seconds(pid)
    return totals


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


# --- our grid -------------------------------------------------------------------


class Grid:
    """``agent local`` in a process of its own, and the control plane it announced."""

    def __init__(self, folder: Path, shape: Shape) -> None:
        self._log_path = folder / f"grid-{shape.workers}w-c{shape.concurrency}.log"
        worker = [sys.executable, "-m", "worker_sdk", "bench.handlers:Empty"]
        command = [
            *("-m", "agent", "local", "--listen", "127.0.0.1:0"),
            *("--workers", str(shape.workers)),
            *("--concurrency", str(shape.concurrency)),
            # Every task has ended when the grid stops: none to wait for.
            *("--grace-period", "1"),
            *("--", *worker),
        ]
        self.child = Child("agent local", command, self._log_path)
        self.address = ""
        self._started = False

    async def start(self) -> None:
        self.child.start()
        self._started = True
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.address:
            self.child.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"agent local not ready within {READY_TIMEOUT} s")
            await asyncio.sleep(READY_POLL)
            found = _ANNOUNCE.search(self._log_path.read_text(errors="replace"))
            self.address = found.group(1) if found else ""

    async def stop(self) -> None:
        # Its pods run in sessions of their own: should it be killed for not
        # stopping in time, they would outlive it.
        pods = descendants(self.child.pid) if self._started else []
        await self.child.stop()
        kill_left_over(pods)

    def cpu(self) -> dict[str, float]:
        return grid_cpu(self.child.pid)


@contextlib.asynccontextmanager
async def running_grid(folder: Path, shape: Shape) -> AsyncIterator[Grid]:
    grid = Grid(folder, shape)
    try:
        await grid.start()
        yield grid
    except ClientError as error:
        tail = grid.child.log_tail()
        raise BenchError(f"{error}\nagent local's log ends with:\n{tail}") from error
    finally:
        await grid.stop()


def _check(value: bytes) -> None:
    if value != OUR_VALUE:
        raise BenchError(f"a task of ours returned {value!r}, not {OUR_VALUE!r}")


async def submit_and_wait(
    session: AsyncSession, tasks: int
) -> tuple[float, float, list[str]]:
    """Seconds to submit ``tasks`` empty tasks, seconds until every one is final,
    and the keys of their results."""
    specs = [TaskSpec(b"") for _ in range(tasks)]
    started = time.perf_counter()
    submitted = await session.submit(specs, batch_size=BATCH_SIZE)
    submit_seconds = time.perf_counter() - started
    counts = await session.wait(timeout=60 + tasks / 10)
    seconds = time.perf_counter() - started
    if counts.get(ClientTaskStatus.COMPLETED, 0) != tasks:
        raise BenchError(f"not every task of ours COMPLETED: {counts}")
    return submit_seconds, seconds, [task.output for task in submitted]


async def our_throughput(
    session: AsyncSession, grid: Grid, tasks: int
) -> tuple[Throughput, list[str]]:
    before, client_before = grid.cpu(), time.process_time()
    submit_seconds, seconds, keys = await submit_and_wait(session, tasks)
    cpu = spent(before, grid.cpu())
    cpu[CLIENT] = time.process_time() - client_before
    return Throughput(tasks, submit_seconds, seconds, cpu), keys


async def our_latencies(session: AsyncSession, samples: int) -> Latencies:
    phases: dict[str, list[float]] = {
        "submit": [],
        "wait_for_results": [],
        "result": [],
    }
    task_ids: list[str] = []
    for _ in range(samples):
        started = time.perf_counter()
        [task] = await session.submit([TaskSpec(b"")])
        submitted = time.perf_counter()
        await session.wait_for_results([task.output], timeout=30)
        settled = time.perf_counter()
        _check(await session.result(task.output))
        phases["submit"].append(submitted - started)
        phases["wait_for_results"].append(settled - submitted)
        phases["result"].append(time.perf_counter() - settled)
        task_ids.append(task.task_id)
    return Latencies(phases, await inside_the_grid(session, task_ids))


async def inside_the_grid(
    session: AsyncSession, task_ids: Sequence[str]
) -> dict[str, list[float]]:
    """How long each task waited in the queue and ran, by the backend's clock."""
    spans: dict[str, list[float]] = {"queued": [], "running": []}
    for task_id in task_ids:
        task = await session.get_task(task_id)
        if not (task.submitted_at and task.started_at and task.ended_at):
            raise BenchError(f"task {task_id} of ours lacks a timestamp: {task}")
        spans["queued"].append((task.started_at - task.submitted_at).total_seconds())
        spans["running"].append((task.ended_at - task.started_at).total_seconds())
    return spans


async def our_reads(session: AsyncSession, keys: Sequence[str], streams: int) -> float:
    """Seconds to read every result with ``streams`` calls in flight."""

    async def read_share(share: Sequence[str]) -> None:
        for key in share:
            _check(await session.result(key))

    started = time.perf_counter()
    await asyncio.gather(
        *(read_share(keys[start::streams]) for start in range(streams))
    )
    return time.perf_counter() - started


async def ours(folder: Path, shape: Shape, settings: Settings) -> Figures:
    """The three measures on a fresh grid; result reads on the one-worker grid only:
    they touch the control plane alone."""
    async with running_grid(folder, shape) as grid, AsyncClient(grid.address) as client:
        await submit_and_wait(await client.create_session(EMPTY_KERNEL), WARM_UP_TASKS)
        session = await client.create_session(EMPTY_KERNEL)
        throughput, keys = await our_throughput(session, grid, settings.tasks)
        alone = await client.create_session(EMPTY_KERNEL)
        figures = Figures(throughput, await our_latencies(alone, settings.samples))
        if shape == ONE_WORKER:
            for streams in (1, settings.streams):
                seconds = await our_reads(session, keys, streams)
                figures.reads[streams] = len(keys) / seconds
        return figures


# --- the Celery baseline --------------------------------------------------------


def redis_version() -> str | None:
    if shutil.which("redis-server") is None:
        return None
    done = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    )
    found = re.search(r"v=(\S+)", done.stdout)
    return found.group(1) if found else done.stdout.strip()


def celery_version() -> str | None:
    try:
        return version("celery")
    except PackageNotFoundError:
        return None


def load_celery_client() -> ModuleType | str:
    """The Celery baseline's client module, or why the baseline cannot run."""
    if redis_version() is None:
        return "redis-server is not on PATH"
    try:
        from bench import _celery_client  # noqa: PLC0415 - Celery is optional
    except ImportError as error:
        return f"Celery is not importable ({error}): pip install 'celery[redis]'"
    return _celery_client


async def in_daemon_thread(function: Callable[[], _T]) -> _T:
    """``function()`` in a thread of its own: the event loop stays free to hear
    SIGTERM, and an interrupted run does not wait for a blocked Celery call."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    values: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            values.append(function())
        except BaseException as error:
            errors.append(error)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(done.set)

    threading.Thread(target=target, daemon=True).start()
    await done.wait()
    if errors:
        raise errors[0]
    return values[0]


async def wait_redis(port: int, child: Child) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        child.check_alive()
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            answer = await reader.readline()
            writer.close()
            if answer == b"+PONG\r\n":
                return
        await asyncio.sleep(READY_POLL)
    raise BenchError(f"redis-server did not answer within {READY_TIMEOUT} s")


def redis_server(folder: Path, port: int) -> Child:
    command = [
        *("-c", _EXEC, "redis-server"),
        *("--port", str(port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no", "--dir", str(folder)),
    ]
    return Child(REDIS, command, folder / "redis.log")


def celery_worker(folder: Path, broker: str, backend: str, queue: str) -> Child:
    command = [
        *("-m", "celery", "-A", "bench.celery_app"),
        *("-b", broker, "--result-backend", backend, "worker"),
        *("--pool", "solo", "--concurrency", "1", "-Q", queue),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    return Child(CELERY_WORKER, command, folder / "celery.log")


@dataclass(frozen=True)
class CeleryProcesses:
    redis: Child
    worker: Child

    def cpu(self) -> dict[str, float]:
        return {
            REDIS: self.redis.cpu_seconds(),
            CELERY_WORKER: self.worker.cpu_seconds(),
        }


@contextlib.asynccontextmanager
async def running_celery(
    folder: Path, client: ModuleType
) -> AsyncIterator[CeleryProcesses]:
    """A redis-server, then a Celery worker on it, until the worker ran a task."""
    port = free_port()
    redis = redis_server(folder, port)
    broker, backend = client.configure(f"redis://127.0.0.1:{port}")
    worker = celery_worker(folder, broker, backend, client.celery_app.QUEUE)
    try:
        redis.start()
        await wait_redis(port, redis)
        worker.start()
        ready = functools.partial(client.wait_ready, READY_TIMEOUT, worker.check_alive)
        await in_daemon_thread(ready)
        yield CeleryProcesses(redis, worker)
    finally:
        await worker.stop()
        await redis.stop()


async def celery_throughput(
    processes: CeleryProcesses, client: ModuleType, tasks: int
) -> tuple[Throughput, list[str]]:
    before, client_before = processes.cpu(), time.process_time()
    run = functools.partial(client.throughput, tasks, 60 + tasks / 10)
    submit_seconds, seconds, ids = await in_daemon_thread(run)
    cpu = spent(before, processes.cpu())
    cpu[CLIENT] = time.process_time() - client_before
    return Throughput(tasks, submit_seconds, seconds, cpu), ids


async def celery(folder: Path, client: ModuleType, settings: Settings) -> Figures:
    async with running_celery(folder, client) as processes:
        await in_daemon_thread(functools.partial(client.latencies, WARM_UP_TASKS))
        throughput, ids = await celery_throughput(processes, client, settings.tasks)
        phases = functools.partial(client.latencies, settings.samples)
        figures = Figures(throughput, Latencies(await in_daemon_thread(phases)))
        for streams in (1, settings.streams):
            read = functools.partial(client.read_results, ids, streams)
            figures.reads[streams] = len(ids) / await in_daemon_thread(read)
        return figures


# --- report ---------------------------------------------------------------------


def _columns(label: str, cells: Iterable[str]) -> str:
    return row(label, cells, width=14, label_width=34)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# Each row of CPU per task: its label, then the process it counts in our grid and
# in the Celery baseline.
_CPU_ROWS = (
    ("client", CLIENT, CLIENT),
    ("control plane | redis-server", CONTROL_PLANE, REDIS),
    ("agents", AGENTS, ""),
    ("workers | celery worker", WORKERS, CELERY_WORKER),
)


def _cpu_cell(throughput: Throughput, names: tuple[str, str]) -> str:
    seconds = next((throughput.cpu[n] for n in names if n in throughput.cpu), None)
    return "-" if seconds is None else _ms(seconds / throughput.tasks)


def report_throughput(settings: Settings, figures: dict[str, Figures]) -> list[str]:
    print(
        f"throughput: {settings.tasks:,} empty tasks per run; tasks/s from the first "
        "submission to the last result final"
    )
    print(
        f"  (ours: agent local, AsyncSession.submit in batches of {BATCH_SIZE}, then "
        "session.wait(), WaitForCompletion;"
    )
    print(
        "   celery: one apply_async per task, then ResultSet.get(), which takes the "
        "results from Redis pub/sub)"
    )
    names = list(figures)
    runs = [figures[name].throughput for name in names]
    print(_columns("", names))
    print(_columns("tasks/s", (f"{run.rate:.0f}" for run in runs)))
    if CELERY in figures:
        celery_rate = figures[CELERY].throughput.rate
        ratios = (f"{run.rate / celery_rate:.2f}" for run in runs)
        print(_columns("ratio to celery", ratios))
    print(
        _columns(
            "submission alone, tasks/s",
            (f"{r.tasks / r.submit_seconds:.0f}" for r in runs),
        )
    )
    print("  CPU ms per task, by process")
    for label, ours_name, celery_name in _CPU_ROWS:
        cells = (_cpu_cell(run, (ours_name, celery_name)) for run in runs)
        print(_columns(f"  {label}", cells))
    return throughput_targets(figures)


def throughput_targets(figures: dict[str, Figures]) -> list[str]:
    if CELERY not in figures:
        return ["note: no Celery baseline: the throughput targets were not checked"]
    celery_rate = figures[CELERY].throughput.rate
    ratios = {s.label: figures[s.label].throughput.rate / celery_rate for s in SHAPES}
    missed = []
    if ratios[ONE_WORKER.label] < TARGET_ONE_WORKER:
        missed.append(
            f"TARGET MISSED: throughput, {ONE_WORKER.label}: ours/celery = "
            f"{ratios[ONE_WORKER.label]:.2f} < {TARGET_ONE_WORKER}"
        )
    scaled = {
        label: ratio for label, ratio in ratios.items() if label != ONE_WORKER.label
    }
    if max(scaled.values()) < TARGET_SCALED:
        found = ", ".join(f"{label} {ratio:.2f}" for label, ratio in scaled.items())
        missed.append(
            f"TARGET MISSED: throughput scaled out: ours/celery = {found}, "
            f"none at least {TARGET_SCALED}"
        )
    return missed


def report_floor(floor: dict[int, float], figures: dict[str, Figures]) -> list[str]:
    print()
    print(
        "the transport floor: bench/agent.py's bare grpc.aio agent and worker, the "
        "protocol's two calls"
    )
    print("  per task (Process, SendResult), no backend, no control plane, no client")
    labels = [f"{c} in flight" for c in FLOOR_CONCURRENCIES]
    print(_columns("", labels))
    print(_columns("tasks/s", (f"{floor[c]:.0f}" for c in FLOOR_CONCURRENCIES)))
    if CELERY not in figures:
        return []
    celery_rate = figures[CELERY].throughput.rate
    ratios = (f"{floor[c] / celery_rate:.2f}" for c in FLOOR_CONCURRENCIES)
    print(_columns("ratio to celery", ratios))
    if floor[1] >= celery_rate:
        return []
    return [
        f"note: one task at a time, the bare floor ({floor[1]:.0f}/s) is below "
        f"Celery's solo worker ({celery_rate:.0f}/s): no grid speaking the protocol "
        "through grpc.aio reaches 1.0x with one worker at concurrency 1 on this machine"
    ]


def report_latency(
    settings: Settings, figures: dict[str, Figures], floor: Floor
) -> list[str]:
    print()
    print(
        f"one task at a time, {settings.samples} tasks: submit-to-result ms (ours: "
        "submit one task, wait_for_results, result;"
    )
    print("  celery: apply_async(), then AsyncResult.get() of its value)")
    print(
        "  inside the grid, by the backend's timestamps: queued from submitted_at to "
        "started_at, running to ended_at"
    )
    print(row("", ("p50", "p99"), width=10, label_width=40))
    missed = []
    for name, figure in figures.items():
        whole = figure.latencies.whole
        _quantiles(f"{name}: submit to result", whole)
        for phase, values in figure.latencies.phases.items():
            _quantiles(f"  {phase}", values)
        for span, values in figure.latencies.inside.items():
            _quantiles(f"  inside the grid: {span}", values)
        if name != CELERY and percentile(whole, 0.5) >= TARGET_P50:
            missed.append(
                f"TARGET MISSED: one task, {name}: submit-to-result p50 "
                f"{_ms(percentile(whole, 0.5))} ms, not under {_ms(TARGET_P50)} ms"
            )
    return missed + report_latency_floor(floor)


def report_latency_floor(floor: Floor) -> list[str]:
    """The bare calls a submit-to-result cannot do without, one at a time."""
    steps = {
        "a bare CreateSmallTasks": floor.calls["submit"],
        "a bare pod's task": floor.task_seconds,
        "a bare TryGetResultStream": floor.calls["result"],
    }
    print(
        "  the transport floor, one step at a time: a bare grpc.aio submitter over "
        "TCP (bench/bare_control.py),"
    )
    print("  and the bare agent and worker's Process call with its SendResult")
    for label, values in steps.items():
        _quantiles(f"floor: {label}", values)
    least = sum(percentile(values, 0.5) for values in steps.values())
    return [
        f"note: one task's submit-to-result cannot go below its steps' bare calls, "
        f"{_ms(least)} ms p50 added up on this machine (without the wait's answer, "
        "the wake-ups and the backend's transactions)"
    ]


def _quantiles(label: str, values: Sequence[float]) -> None:
    cells = (_ms(percentile(values, 0.5)), _ms(percentile(values, 0.99)))
    print(row(label, cells, width=10, label_width=40))


def report_reads(settings: Settings, figures: dict[str, Figures]) -> list[str]:
    print()
    print(
        f"results retrieved per second: the {settings.tasks:,} stored results of the "
        "throughput run read again, split among the streams"
    )
    print(
        f"  (ours, on the {ONE_WORKER.label} grid: session.result(key), one "
        "TryGetResultStream call each;"
    )
    print(
        "   celery: a fresh AsyncResult(id).get() each: a SUBSCRIBE to its channel "
        "and a GET of the stored result)"
    )
    names = [name for name, figure in figures.items() if figure.reads]
    print(_columns("", names))
    for streams in (1, settings.streams):
        label = "1 stream" if streams == 1 else f"{streams} streams in flight"
        rates = (figures[name].reads[streams] for name in names)
        print(_columns(f"results/s, {label}", (f"{rate:.0f}" for rate in rates)))
    ours = figures[ONE_WORKER.label].reads[settings.streams]
    if ours >= TARGET_READS:
        return []
    return [
        f"TARGET MISSED: results retrieved with {settings.streams} streams: "
        f"{ours:.0f}/s, not at least {TARGET_READS:.0f}/s"
    ]


# --- main -----------------------------------------------------------------------


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="empty tasks per throughput run")
    parser.add_argument("--samples", type=int, help="tasks run one at a time")
    parser.add_argument(
        "--quick", action="store_true", help="1,000 tasks and 50 samples: under 60 s"
    )
    args = parser.parse_args(argv)
    tasks = (1000 if args.quick else 10_000) if args.tasks is None else args.tasks
    samples = (50 if args.quick else 200) if args.samples is None else args.samples
    if tasks < STREAMS or samples < 1:
        parser.error(f"--tasks must be at least {STREAMS} and --samples positive")
    return Settings(tasks=tasks, samples=samples)


FLOOR_CONCURRENCIES = (1, 8)


@dataclass(frozen=True)
class Floor:
    """The bare code's figures: the agent and worker of bench/agent.py by
    concurrency, their calls one task at a time, and a client's two calls to a bare
    Submitter."""

    rates: dict[int, float]
    task_seconds: list[float]
    calls: dict[str, list[float]]


async def transport_floor(root: Path, tasks: int, samples: int) -> Floor:
    folders = agent_bench.RunFolders(root)
    settings = agent_bench.Settings(tasks=tasks, payload_bytes=0)
    rates, task_seconds = {}, []
    for concurrency in FLOOR_CONCURRENCIES:
        run = folders.new(f"floor-c{concurrency}")
        floor = await agent_bench.floor_run(run, settings, concurrency, tasks=tasks)
        rates[concurrency] = floor.rate
        if concurrency == 1:
            task_seconds = floor.latencies
    return Floor(rates, task_seconds, await bare_call_latencies(samples))


async def measure(settings: Settings, root: Path) -> dict[str, Figures]:
    figures = {}
    client = load_celery_client()
    if isinstance(client, str):
        print(f"note: the Celery baseline could not run: {client}")
    else:
        progress("celery, one solo worker")
        figures[CELERY] = await celery(root, client, settings)
    for shape in SHAPES:
        progress(f"ours, {shape.label}")
        figures[shape.label] = await ours(root, shape, settings)
    return figures


async def run(settings: Settings) -> list[str]:
    root = Path(tempfile.mkdtemp(prefix="gridpod-bench-e2e-"))
    try:
        figures = await measure(settings, root)
        progress("the transport floor: bare agent, worker and submitter")
        floor = await transport_floor(root, settings.tasks, settings.samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return (
        report_throughput(settings, figures)
        + report_floor(floor.rates, figures)
        + report_latency(settings, figures, floor)
        + report_reads(settings, figures)
    )


def main() -> None:
    settings = parse_settings()
    celery_text = celery_version() or "not installed"
    redis_text = redis_version() or "not found"
    print_header("end-to-end", f", celery {celery_text}, redis-server {redis_text}")
    run_benchmark(run(settings))


if __name__ == "__main__":
    main()
