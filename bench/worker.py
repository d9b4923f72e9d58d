"""Benchmark of the worker SDK against a bare grpc.aio floor, over unix sockets.

``python bench/worker.py [--tasks N] [--payload-mib M] [--quick]`` prints figures
and ratios measured in one run; it asserts nothing and exits 0 when a target is
missed, after a ``TARGET MISSED:`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# Before grpc, so that this process runs gRPC with our processes' settings.
import worker_sdk._grpc_defaults  # noqa: F401  # isort: skip
import grpc

# Run as a script, this file's folder heads sys.path; the bench package is found
# from the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    CHANNEL_OPTIONS,
    MIB,
    REPO,
    BenchAgent,
    BenchError,
    Child,
    agent_server,
    make_payload,
    mib,
    output_key,
    print_header,
    row,
    run_benchmark,
    task_messages,
    wait_for_socket,
    wait_serving,
)
from gridpod_api import worker_common_pb2, worker_service_pb2_grpc

REFERENCE_CHUNK = 84_000  # what the reference agent sends
SDK_SPILL_THRESHOLD = 64 * MIB  # the SDK's default: larger payloads go to a file
TARGET_RATIO = 0.8
TARGET_RSS = 1.3

_Request = worker_common_pb2.ProcessRequest


@dataclass(frozen=True, kw_only=True)
class Settings:
    tasks: int
    warmup: int
    rounds: int
    payload_bytes: int
    calls: int  # payload tasks per worker
    chunk_sizes: tuple[int, ...]


def chunked(data: bytes, chunk_size: int) -> Iterator[bytes]:
    # Cut as it is sent, so that the driver holds one chunk besides the payload.
    view = memoryview(data)
    for start in range(0, len(data), chunk_size):
        yield bytes(view[start : start + chunk_size])


# --- worker subprocesses --------------------------------------------------------


class WorkerProcess(Child):
    """One worker subprocess: its socket, its log, its channel and /proc figures."""

    def __init__(self, name: str, command: Sequence[str], socket_path: Path) -> None:
        super().__init__(name, command, socket_path.with_suffix(".log"))
        self._socket_path = socket_path
        self._channel: grpc.aio.Channel | None = None
        self.stub: worker_service_pb2_grpc.WorkerAsyncStub | None = None

    async def __aenter__(self) -> WorkerProcess:
        try:
            self.start()
            await self._wait_serving(timeout=30.0)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        await wait_for_socket(self._socket_path, self, timeout)
        target = f"unix:{self._socket_path}"
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = worker_service_pb2_grpc.WorkerStub(self._channel)
        left = deadline - time.monotonic()
        await wait_serving(self.stub, self.name, left, self.check_alive)

    async def process(
        self, messages: Iterable[_Request], timeout: float
    ) -> worker_common_pb2.ProcessReply:
        assert self.stub is not None
        reply = await self.stub.Process(iter(messages), timeout=timeout)
        if reply.output.WhichOneof("type") != "ok":
            raise BenchError(f"{self.name}: a task failed: {reply.output}")
        return reply

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        await super().stop()


class Workers:
    """Names the socket of each worker started, and builds their command lines."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.agent_socket = directory / "agent.sock"
        self._count = 0

    def _socket(self) -> Path:
        self._count += 1
        return self._directory / f"worker-{self._count}.sock"

    def sdk(self, name: str, handler: str) -> WorkerProcess:
        socket_path = self._socket()
        command = [
            *("-m", "worker_sdk", f"bench.handlers:{handler}"),
            *("--address", f"unix://{socket_path}"),
            *("--agent", f"unix://{self.agent_socket}"),
        ]
        return WorkerProcess(name, command, socket_path)

    def floor(self, name: str, kernel: str) -> WorkerProcess:
        socket_path = self._socket()
        command = [
            str(REPO / "bench" / "bare_worker.py"),
            *("--address", f"unix:{socket_path}"),
            *("--agent", f"unix:{self.agent_socket}"),
            *("--kernel", kernel),
        ]
        return WorkerProcess(name, command, socket_path)


# --- empty tasks ----------------------------------------------------------------


@dataclass
class TaskSample:
    """Latencies, wall time and worker CPU time of one worker's timed tasks."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: float = 0.0
    round_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def cpu_per_task(self) -> float:
        return self.cpu / len(self.latencies)


class TaskNumbers:
    """Hands out task numbers, unique across the run, so every key is new."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, count: int) -> range:
        start, self._next = self._next, self._next + count
        return range(start, self._next)


def empty_streams(numbers: range) -> list[list[_Request]]:
    # Built before the clock starts: the driver's own work should weigh little.
    return [list(task_messages(n, [b"tiny payload"], REFERENCE_CHUNK)) for n in numbers]


async def run_tasks(
    worker: WorkerProcess, streams: list[list[_Request]]
) -> list[float]:
    latencies = []
    for messages in streams:
        started = time.perf_counter()
        await worker.process(messages, timeout=30.0)
        latencies.append(time.perf_counter() - started)
    return latencies


async def time_round(
    worker: WorkerProcess, streams: list[list[_Request]], sample: TaskSample
) -> None:
    cpu, started = worker.cpu_seconds(), time.perf_counter()
    latencies = await run_tasks(worker, streams)
    elapsed = time.perf_counter() - started
    sample.cpu += worker.cpu_seconds() - cpu
    sample.elapsed += elapsed
    sample.latencies += latencies
    sample.round_rates.append(len(streams) / elapsed)


def round_sizes(total: int, rounds: int) -> list[int]:
    size, extra = divmod(total, rounds)
    return [size + (1 if index < extra else 0) for index in range(rounds)]


async def empty_tasks(
    settings: Settings, workers: Workers, numbers: TaskNumbers
) -> dict[str, TaskSample]:
    """Every worker alive at once, timed in interleaved rounds, so that a slow
    spell of the machine is shared rather than landing on one worker."""
    async with contextlib.AsyncExitStack() as stack:
        started = [
            workers.sdk("sdk(async)", "Empty"),
            workers.sdk("sdk(sync)", "EmptySync"),
            workers.floor("floor", "empty"),
        ]
        running = [await stack.enter_async_context(w) for w in started]
        for worker in running:
            await run_tasks(worker, empty_streams(numbers.take(settings.warmup)))
        samples = {worker.name: TaskSample() for worker in running}
        for index, size in enumerate(round_sizes(settings.tasks, settings.rounds)):
            # Rotate who goes first: the first after a pause may start colder.
            order = running[index % len(running) :] + running[: index % len(running)]
            for worker in order:
                streams = empty_streams(numbers.take(size))
                await time_round(worker, streams, samples[worker.name])
        return samples


# --- payload streaming ----------------------------------------------------------


@dataclass(frozen=True)
class PayloadSample:
    name: str
    chunk_size: int
    seconds: float
    idle_rss: int
    peak_rss: int


async def stream_payload(
    worker: WorkerProcess,
    payload: bytes,
    chunk_size: int,
    numbers: TaskNumbers,
    agent: BenchAgent,
    calls: int,
) -> PayloadSample:
    """The fastest of ``calls`` tasks; the peak covers them all, so that memory a
    task fails to give back shows as well."""
    # One small task first, so that the idle figure includes gRPC's warm state.
    warm_up = task_messages(numbers.take(1).start, [b"warm-up"], chunk_size)
    await worker.process(warm_up, timeout=30.0)
    idle = worker.memory_bytes("VmRSS")
    expected = b"%08x" % zlib.crc32(payload)
    times = []
    for number in numbers.take(calls):
        started = time.perf_counter()
        messages = task_messages(number, chunked(payload, chunk_size), chunk_size)
        await worker.process(messages, timeout=600.0)
        times.append(time.perf_counter() - started)
        if agent.results.pop(output_key(number), None) != expected:
            raise BenchError(f"{worker.name} sent a wrong checksum of the payload")
    peak = worker.memory_bytes("VmHWM")
    return PayloadSample(worker.name, chunk_size, min(times), idle, peak)


async def payload_streaming(
    settings: Settings, workers: Workers, numbers: TaskNumbers, agent: BenchAgent
) -> list[PayloadSample]:
    """Time the SDK against two floors, with a fresh worker per figure (VmHWM is a
    peak over the process's whole life).

    ``floor`` hashes each chunk as it arrives and keeps none: the least any worker
    can do, so the ratio to it is the whole price of handing a kernel its payload
    in one piece. ``floor(buffered)`` pays that price the plain way, a bytearray.
    """
    payload = make_payload(settings.payload_bytes)
    samples = []
    for chunk_size in settings.chunk_sizes:
        for worker in (
            workers.sdk("sdk", "Checksum"),
            workers.floor("floor", "crc32"),
            workers.floor("floor(buffered)", "crc32-buffered"),
        ):
            async with worker:
                sample = await stream_payload(
                    worker, payload, chunk_size, numbers, agent, settings.calls
                )
            samples.append(sample)
    return samples


# --- report ---------------------------------------------------------------------


def report_empty(settings: Settings, samples: dict[str, TaskSample]) -> list[str]:
    floor = samples["floor"]
    sdk = {name: s for name, s in samples.items() if name != "floor"}
    ratios = {name: s.rate / floor.rate for name, s in sdk.items()}
    rates = "  ".join(f"{name} {s.rate:.0f}/s" for name, s in samples.items())
    print(
        f"empty tasks  {rates}  ratio "
        + " / ".join(f"{r:.2f}" for r in ratios.values())
    )
    print(
        f"  ({settings.tasks} timed tasks per worker in {settings.rounds} "
        f"interleaved rounds, after {settings.warmup} warm-up; one 2-byte result "
        "each)"
    )
    print(row("", samples))
    print(row("tasks/s", (f"{s.rate:.0f}" for s in samples.values())))
    spreads = (
        f"{min(s.round_rates):.0f}-{max(s.round_rates):.0f}" for s in samples.values()
    )
    print(row("tasks/s of rounds", spreads))
    for label, fraction in (("latency p50 (ms)", 0.5), ("latency p99 (ms)", 0.99)):
        values = (f"{s.percentile(fraction) * 1000:.3f}" for s in samples.values())
        print(row(label, values))
    print(
        row(
            "worker CPU/task (us)",
            (f"{s.cpu_per_task * 1e6:.0f}" for s in samples.values()),
        )
    )
    print(row("ratio to floor", [*(f"{r:.2f}" for r in ratios.values()), "-"]))
    return [
        f"TARGET MISSED: empty tasks {name}/floor = {ratio:.2f} < {TARGET_RATIO}"
        for name, ratio in ratios.items()
        if ratio < TARGET_RATIO
    ]


def _payload_table(group: dict[str, PayloadSample], size: int) -> dict[str, float]:
    """Print one chunk size's figures; return each worker's RSS growth."""
    samples = group.values()
    print(row("", group))
    print(row("MB/s", (f"{size / s.seconds / 1e6:.0f}" for s in samples)))
    print(row("idle RSS", (mib(s.idle_rss) for s in samples)))
    print(row("peak RSS (VmHWM)", (mib(s.peak_rss) for s in samples)))
    print(row("peak / payload", (f"{s.peak_rss / size:.2f}x" for s in samples)))
    added = {name: (s.peak_rss - s.idle_rss) / size for name, s in group.items()}
    print(row("(peak - idle) / payload", (f"{a:.2f}x" for a in added.values())))
    ratio = group["floor"].seconds / group["sdk"].seconds
    print(f"  ratio sdk/floor {ratio:.2f} (MB/s)")
    return added


def report_payload(settings: Settings, samples: list[PayloadSample]) -> list[str]:
    size = settings.payload_bytes
    held = "spills it to a file" if size > SDK_SPILL_THRESHOLD else "holds it in memory"
    missed = []
    for chunk_size in settings.chunk_sizes:
        print()
        print(
            f"payload {mib(size)} in {chunk_size:,}-byte chunks (the SDK {held}); "
            f"best of {settings.calls} tasks per worker"
        )
        group = {s.name: s for s in samples if s.chunk_size == chunk_size}
        added = _payload_table(group, size)
        # Judged above the idle process: at small payloads the interpreter and gRPC
        # alone would exceed any multiple of the payload.
        if added["sdk"] >= TARGET_RSS:
            missed.append(
                f"TARGET MISSED: payload in {chunk_size:,}-byte chunks: the SDK "
                f"worker's peak RSS grew by {added['sdk']:.2f}x the payload "
                f"(limit {TARGET_RSS}x)"
            )
    return missed


# --- main -----------------------------------------------------------------------


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="timed empty tasks per worker")
    parser.add_argument("--payload-mib", type=int, help="size of the big payload")
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        default=MIB,
        help="payload chunk size; 84,000-byte chunks are timed as well",
    )
    parser.add_argument(
        "--quick", action="store_true", help="300 tasks and 32 MiB: under 30 s"
    )
    args = parser.parse_args(argv)
    tasks = (300 if args.quick else 3000) if args.tasks is None else args.tasks
    mebibytes = (
        (32 if args.quick else 256) if args.payload_mib is None else args.payload_mib
    )
    if min(tasks, mebibytes, args.chunk_bytes) < 1:
        parser.error("--tasks, --payload-mib and --chunk-bytes must be positive")
    return Settings(
        tasks=tasks,
        warmup=50 if args.quick else 200,
        rounds=min(tasks, 3 if args.quick else 10),
        payload_bytes=mebibytes * MIB,
        calls=2 if args.quick else 3,
        chunk_sizes=tuple(dict.fromkeys([args.chunk_bytes, REFERENCE_CHUNK])),
    )


async def run(settings: Settings) -> list[str]:
    directory = Path(tempfile.mkdtemp(prefix="gridpod-bench-"))
    agent, workers, numbers = BenchAgent(), Workers(directory), TaskNumbers()
    try:
        async with agent_server(workers.agent_socket, agent):
            empty = await empty_tasks(settings, workers, numbers)
            missed = report_empty(settings, empty)
            agent.results.clear()
            streamed = await payload_streaming(settings, workers, numbers, agent)
            return missed + report_payload(settings, streamed)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    settings = parse_settings()
    print_header("worker")
    run_benchmark(run(settings))


if __name__ == "__main__":
    main()
