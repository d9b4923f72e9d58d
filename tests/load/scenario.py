"""One load run: a grid of real processes, good clients with bad ones mixed in,
then an account of what the grid holds and the figures of the load it held.

``run_load`` never raises for what it finds: each problem is a line of the report,
which the test asserts empty and the benchmark prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import resource
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.backend import open_backend
from tests.load.account import account
from tests.load.bad import BadClient, BadContext, Garbage, Malformed, UnknownIds
from tests.load.bad_streams import (
    BrokenUploads,
    GarbageStreams,
    SlowReaders,
    StreamHog,
    served_streams,
)
from tests.load.good import (
    DERIVE,
    GoodPlan,
    GoodRun,
    Ledger,
    SessionDesk,
    good_client,
)
from tests.load.grid import Limits, LoadGrid, start_grid
from tests.load.handlers import derived
from tests.load.tally import WRITE_FAILED, Streams, Tally
from worker_sdk.client import AsyncClient, ResultStatus, TaskSpec

_SUBMITTER_SERVICE = "armonik.api.grpc.v1.submitter.Submitter"
# Bad clients finish their round within this once the good clients are done.
_BAD_GRACE = 30.0
# After the load, the streams of the bad clients' address are released within this.
_RELEASE_TIME = 10.0


# The bad clients of a run, taken in turn: ten make one of each kind, and two of
# those that weigh least or matter most.
_BAD_KINDS: tuple[type[BadClient], ...] = (
    Garbage,
    BrokenUploads,
    SlowReaders,
    UnknownIds,
    Malformed,
    GarbageStreams,
    StreamHog,
    Garbage,
    BrokenUploads,
    SlowReaders,
)


def bad_clients(count: int, context: BadContext) -> list[BadClient]:
    """``count`` bad clients of every kind in turn; no hog when it would take the
    good clients' streams too."""
    kinds = [kind for kind in _BAD_KINDS if context.hog or kind is not StreamHog]
    return [
        kind(index, context)
        for index, kind in zip(range(count), itertools.cycle(kinds))
    ]


@dataclass(frozen=True, kw_only=True)
class LoadSizes:
    """How big a run is."""

    clients: int = 50
    batches: int = 2
    batch_size: int = 5
    bad_clients: int = 10
    pods: int = 2
    # How long the good clients may take, all of them.
    timeout: float = 120.0

    def limits(self) -> Limits:
        # A good client holds one stream at a time, and briefly a second while
        # the control plane has yet to see the end of the first.
        return Limits(max_streams_per_client=2 * self.clients + 16)

    def plan(self) -> GoodPlan:
        return GoodPlan(
            clients=self.clients, batches=self.batches, batch_size=self.batch_size
        )


@dataclass
class LoadReport:
    """What a run did, what it saw and what went wrong."""

    backend: str
    sizes: LoadSizes
    good_tasks: int = 0
    sessions: int = 0
    seconds: float = 0.0
    peak_streams: int = 0
    separate_addresses: bool = False
    bad_kinds: Counter[str] = field(default_factory=Counter)
    bad_rounds: int = 0
    # Tracebacks that grpc.aio logged for replies to streams cancelled meanwhile.
    cancelled_writes: int = 0
    tally: Tally = field(default_factory=Tally)
    problems: list[str] = field(default_factory=list)
    logs: str = ""
    # CPU seconds of each kind of process, the clients' own included.
    cpu: dict[str, float] = field(default_factory=dict)
    # Seconds spent starting the grid, loading it, accounting and checking.
    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - started

    @property
    def tasks_per_second(self) -> float:
        return self.good_tasks / self.seconds if self.seconds else 0.0

    def text(self) -> str:
        lines = [*self._summary(), *self._statuses()]
        if not self.problems:
            return "\n".join([*lines, "  problems: none"])
        lines += ["  problems:", *[f"    {p}" for p in self.problems]]
        return "\n".join([*lines, self.logs] if self.logs else lines)

    def _summary(self) -> list[str]:
        sizes = self.sizes
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.bad_kinds.items()))
        origin = "from ::1" if self.separate_addresses else "from the same address"
        return [
            f"load on {self.backend}: {sizes.clients} good clients in "
            f"{self.sessions} sessions, {sizes.bad_clients} bad clients {origin} "
            f"({kinds}), {sizes.pods} pods",
            f"  good tasks       {self.good_tasks} in {self.seconds:.1f} s: "
            f"{self.tasks_per_second:.0f} tasks/s, submitted, waited for and "
            "read back",
            f"  phases           {_seconds(self.phases)}",
            f"  cpu              {_seconds(self.cpu)}",
            f"  streams open     {self.peak_streams} at most at once, good and bad "
            f"(limit {sizes.limits().max_streams_per_client} per client address)",
        ]

    def _statuses(self) -> list[str]:
        codes = self.tally.by_code()
        lines = [
            f"  bad calls        {self.tally.calls} in {self.bad_rounds} rounds, "
            "by status:",
            *[f"    {code:<20} {count:>6}" for code, count in codes.most_common()],
        ]
        if WRITE_FAILED in codes:
            lines.append(
                f"    ({WRITE_FAILED}: the client was still writing when the call "
                "ended, and gRPC's client lost the status the control plane sent)"
            )
        return [
            *lines,
            "  grpc.aio tracebacks for replies to cancelled streams: "
            f"{self.cancelled_writes}",
            "  by probe:",
            *[
                f"    {count:>6}  {code:<20} {probe}"
                for (probe, code), count in sorted(self.tally.by_probe.items())
            ],
        ]


def _seconds(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f} s" for name, value in figures.items())


async def run_load(backend_url: str, folder: Path, sizes: LoadSizes) -> LoadReport:
    """Start a grid in ``folder`` over ``backend_url``, load it, account for it."""
    report = LoadReport(backend_url.partition(":")[0], sizes)
    own_cpu_at_start = _own_cpu()
    with report.phase("start"):
        grid = await asyncio.to_thread(
            start_grid, backend_url, folder, sizes.limits(), sizes.pods
        )
    report.separate_addresses = grid.separate_addresses
    try:
        with report.phase("load"):
            good, bad_sessions = await _load(grid, sizes, report)
        report.sessions = len(good.sessions)
        with report.phase("account"):
            report.problems += await _account(backend_url, good, bad_sessions)
        with report.phase("checks"):
            report.problems += await _still_serving(grid, sizes.limits())
        report.cpu = grid.cpu_seconds()
        report.cpu["this process"] = _own_cpu() - own_cpu_at_start
        report.problems += grid.exited()
        report.problems += _tracebacks(grid, report)
        report.problems += _refused_as_failures(grid)
    finally:
        grid.stop()
    if report.problems:
        report.logs = grid.logs()
    return report


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _account(
    backend_url: str, good: Ledger, bad_sessions: dict[str, int]
) -> list[str]:
    backend = open_backend(backend_url)
    try:
        return await account(backend, good, bad_sessions)
    finally:
        await backend.close()


async def _load(
    grid: LoadGrid, sizes: LoadSizes, report: LoadReport
) -> tuple[Ledger, dict[str, int]]:
    """Run the good clients to their end with the bad ones beside them; the good
    tasks created, and the bad clients' sessions with the tasks each may hold."""
    streams = Streams()
    context = BadContext(
        address=grid.bad_address,
        limits=sizes.limits(),
        tally=report.tally,
        streams=streams,
        stop=asyncio.Event(),
        hog=grid.separate_addresses,
    )
    bad = bad_clients(sizes.bad_clients, context)
    report.bad_kinds = Counter(client.name for client in bad)
    bad_runs = [asyncio.ensure_future(client.run()) for client in bad]
    started = time.monotonic()
    good = await _good_clients(grid, sizes, streams, report)
    report.seconds = time.monotonic() - started
    report.good_tasks = len(good.tasks)
    context.stop.set()
    report.problems += await _bad_ends(bad, bad_runs)
    report.bad_rounds = sum(client.rounds for client in bad)
    report.peak_streams = streams.peak
    report.problems += [f"bad call {s}" for s in report.tally.surprises]
    return good, context.sessions


async def _good_clients(
    grid: LoadGrid, sizes: LoadSizes, streams: Streams, report: LoadReport
) -> Ledger:
    run = GoodRun(grid.good_address, sizes.plan(), SessionDesk(), streams, Ledger())
    runs = [
        asyncio.ensure_future(good_client(index, run)) for index in range(sizes.clients)
    ]
    _, late = await asyncio.wait(runs, timeout=sizes.timeout)
    for each in late:
        each.cancel()
    if late:
        report.problems.append(
            f"{len(late)} good clients were not done after {sizes.timeout} s"
        )
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException) and not isinstance(
            outcome, asyncio.CancelledError
        ):
            report.problems.append(f"good client {index} failed: {outcome!r}")
    return run.ledger


async def _bad_ends(
    clients: Sequence[BadClient], runs: Sequence[asyncio.Future[None]]
) -> list[str]:
    if not runs:
        return []
    _, late = await asyncio.wait(runs, timeout=_BAD_GRACE)
    for run in late:
        run.cancel()
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    problems = []
    for client, outcome in zip(clients, outcomes, strict=True):
        if isinstance(outcome, asyncio.CancelledError):
            problems.append(f"bad client {client.index} ({client.name}) hung")
        elif isinstance(outcome, BaseException):
            problems.append(
                f"bad client {client.index} ({client.name}) failed: {outcome!r}"
            )
    return problems


# -- after the load -----------------------------------------------------------------


async def _still_serving(grid: LoadGrid, limits: Limits) -> list[str]:
    """The control plane reports SERVING, serves a fresh client, and serves as
    many streams from the bad clients' address as it ever did."""
    checks = (
        _health(grid.good_address),
        _fresh_request(grid.good_address),
        _streams_released(grid.bad_address, limits.max_streams_per_client),
    )
    problems = []
    for check in checks:
        try:
            problems += await check
        except Exception as error:
            problems.append(f"after the load: {error!r}")
    return problems


async def _health(address: str) -> list[str]:
    problems = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", _SUBMITTER_SERVICE):
            request = health_pb2.HealthCheckRequest(service=service)
            reply = await stub.Check(request, timeout=5)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                problems.append(f"health of {service or 'the server'}: {reply}")
    return problems


async def _fresh_request(address: str) -> list[str]:
    payload = b"a fresh client after the load"
    async with AsyncClient(address) as client:
        session = await client.create_session(DERIVE)
        [task] = await session.submit([TaskSpec(payload)])
        statuses = await session.wait_for_results([task.output], timeout=30)
        if statuses != {task.output: ResultStatus.COMPLETED}:
            return [f"a fresh client's task ended as {statuses}"]
        value = await session.result(task.output)
    if value != derived(payload):
        return [f"a fresh client's result is {value[:100]!r}"]
    return []


async def _streams_released(address: str, limit: int) -> list[str]:
    """Every stream a bad client opened was counted out when it ended."""
    deadline = time.monotonic() + _RELEASE_TIME
    while (fared := await served_streams(address, limit))["OK"] < limit:
        if time.monotonic() > deadline:
            return [
                f"{limit} streams from {address}, {_RELEASE_TIME} s after the "
                f"load, fare as {dict(fared)}: some were never counted out"
            ]
        await asyncio.sleep(0.2)
    return []


# What grpc.aio logs, with a traceback, when a reply is written to a stream its
# client has just cancelled: the servicer has no way to see it coming.
_CANCELLED_WRITE = "ExecuteBatchError raised in core by servicer method"


def _logs(grid: LoadGrid) -> dict[str, str]:
    paths = {"control plane": grid.control_plane.log}
    for pod in grid.pods:
        for role in ("agent", "worker"):
            paths[f"{role} of {pod.name}"] = pod.folder / f"{role}.log"
    return {
        name: path.read_text(errors="replace") if path.exists() else ""
        for name, path in paths.items()
    }


def _tracebacks(grid: LoadGrid, report: LoadReport) -> list[str]:
    """A line for each traceback in the processes' logs, with its first lines,
    but those of writes to cancelled streams, which are counted."""
    problems = []
    for name, text in _logs(grid).items():
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if not line.startswith("Traceback") or _chained(lines, number):
                continue
            if number and _CANCELLED_WRITE in lines[number - 1]:
                report.cancelled_writes += 1
                continue
            excerpt = "\n      ".join(lines[number - 1 : number + 30])
            problems.append(
                f"the log of the {name} holds a traceback:\n      {excerpt}"
            )
    return problems


def _chained(lines: list[str], number: int) -> bool:
    """Whether the traceback on line ``number`` continues the one before it."""
    return number >= 2 and lines[number - 2].startswith(
        ("The above exception", "During handling of the above exception")
    )


def _refused_as_failures(grid: LoadGrid) -> list[str]:
    """The control plane logs each refusal with its status: none may be one that
    says the control plane failed."""
    return [
        f"the control plane refused a call as a failure: {line}"
        for line in grid.control_plane.logs().splitlines()
        if "refused" in line and ("INTERNAL" in line or "UNKNOWN" in line)
    ]
