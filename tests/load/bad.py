"""Bad clients: raw gRPC calls that send garbage, name ids that exist nowhere or
pass the control plane's limits (here), or misuse streams (``bad_streams``).
Each call's status is tallied against the statuses it may get.

Each kind of bad client repeats its rounds until the good clients are done; it
records the sessions it creates, and how many tasks each may end up with, so that
the run can check that no broken request left a task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from gridpod_api import (
    objects_pb2,
    submitter_common_pb2,
    submitter_service_pb2_grpc,
)
from tests.load.grid import Limits
from tests.load.tally import CLEAR, Streams, Tally
from worker_sdk._agent import CHANNEL_OPTIONS

SUBMITTER = "/armonik.api.grpc.v1.submitter.Submitter/"
# Every probe of a bad client ends within this, answered or not.
DEADLINE = 5.0
# What a bad client needs for its probes (its sessions, a task it reads) may take
# longer on a loaded machine; a request whose outcome is unknown would leave the
# tasks it may have created unaccounted.
SETUP_DEADLINE = 60.0
OK = grpc.StatusCode.OK
INVALID = {grpc.StatusCode.INVALID_ARGUMENT}
_NOT_FOUND = {grpc.StatusCode.NOT_FOUND}
EXHAUSTED = {grpc.StatusCode.RESOURCE_EXHAUSTED}
CANCELLED = {grpc.StatusCode.CANCELLED}
PRECONDITION = {grpc.StatusCode.FAILED_PRECONDITION}
# Random bytes may parse, into a request that is then served or refused.
_ANY = {*CLEAR, OK}

Common = submitter_common_pb2
Large = Common.CreateLargeTaskRequest
_GARBAGE_METHODS = (
    "CreateSession",
    "CreateSmallTasks",
    "GetTaskStatus",
    "GetResultStatus",
    "TryGetTaskOutput",
    "WaitForAvailability",
    "WaitForCompletion",
    "CountTasks",
    "ListTasks",
    "ListSessions",
    "GetServiceConfiguration",
)
if TYPE_CHECKING:
    Stub = submitter_service_pb2_grpc.SubmitterAsyncStub
    _RawUnary = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
# A unary call to make: its name, method, request and the statuses it may get.
_Probe = tuple[str, Callable[..., Awaitable[object]], Any, Collection[grpc.StatusCode]]


@dataclass(kw_only=True)
class BadContext:
    """What the bad clients of one run share."""

    address: str
    limits: Limits
    tally: Tally
    streams: Streams
    stop: asyncio.Event
    # Whether one client may hold every stream of its address: only when the
    # good clients come from another one.
    hog: bool
    # The sessions bad clients created, and how many tasks each may hold: those
    # of whole, valid requests only.
    sessions: dict[str, int] = field(default_factory=dict)


def kernel_options(kernel: str) -> objects_pb2.TaskOptions:
    options = objects_pb2.TaskOptions()
    options.options["kernel"] = kernel
    return options


def fresh_id() -> str:
    return str(uuid.uuid4())


def task_header(key: str) -> Large:
    header = objects_pb2.TaskRequestHeader(expected_output_keys=[key])
    return Large(init_task=objects_pb2.InitTaskRequest(header=header))


def payload_chunk(data: bytes) -> Large:
    return Large(task_payload=objects_pb2.DataChunk(data=data))


DATA_COMPLETE = Large(task_payload=objects_pb2.DataChunk(data_complete=True))
LAST_TASK = Large(init_task=objects_pb2.InitTaskRequest(last_task=True))


def unparsable(rng: random.Random) -> bytes:
    """Bytes that no message parses from: a field of the invalid wire type 7, or a
    valid message cut inside its last field."""
    if rng.random() < 0.5:
        return bytes([0x0F]) + rng.randbytes(rng.randint(0, 64))
    task = objects_pb2.TaskRequest(
        expected_output_keys=["k"], payload=rng.randbytes(200)
    )
    whole = Common.CreateSmallTaskRequest(
        session_id=fresh_id(), task_requests=[task]
    ).SerializeToString()
    return whole[: len(whole) - rng.randint(1, 150)]


class BadClient:
    """One bad client on a channel of its own: ``setup`` once, then ``round``
    until the run stops, at least once."""

    pause = 0.05

    def __init__(self, index: int, context: BadContext) -> None:
        self.index = index
        self.context = context
        self.rng = random.Random(index)
        self.rounds = 0
        self._open()

    def _open(self) -> None:
        self.channel = grpc.aio.insecure_channel(
            self.context.address, options=CHANNEL_OPTIONS
        )
        self.stub: Stub = submitter_service_pb2_grpc.SubmitterStub(self.channel)

    @property
    def name(self) -> str:
        return type(self).__name__

    async def run(self) -> None:
        try:
            await self.setup()
            while True:
                await self.round()
                self.rounds += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.context.stop.wait(), self.pause)
                if self.context.stop.is_set():
                    return
        finally:
            await self.channel.close()

    async def setup(self) -> None:
        """What the rounds need, made once."""

    async def round(self) -> None:
        raise NotImplementedError

    # -- recording ------------------------------------------------------------------

    def record(
        self, probe: str, error: grpc.aio.AioRpcError | None, allowed: Collection[Any]
    ) -> None:
        # On a machine this loaded, any call may run out of time.
        allowed = {*allowed, grpc.StatusCode.DEADLINE_EXCEEDED}
        if error is None:
            self.context.tally.record(probe, OK, "", allowed)
        else:
            self.context.tally.record(
                probe,
                error.code(),
                error.details() or "",
                allowed,
                error.debug_error_string() or "",
            )

    async def expect(
        self, probe: str, call: Awaitable[object], allowed: Collection[Any]
    ) -> None:
        """Make a unary call and tally its status."""
        try:
            await call
        except grpc.aio.AioRpcError as error:
            self.record(probe, error, allowed)
        else:
            self.record(probe, None, allowed)

    async def expect_all(self, probes: Sequence[_Probe], suffix: str = "") -> None:
        """Make each probe's call, one after the other, and tally its status."""
        for name, method, request, allowed in probes:
            probe = f"{name} {suffix}".strip()
            await self.expect(probe, method(request, timeout=DEADLINE), allowed)

    async def expect_stream(
        self, probe: str, replies: AsyncIterable[object], allowed: Collection[Any]
    ) -> None:
        """Read a stream to its end and tally its status; any stream may be
        refused while another client of this address holds every one it may."""
        allowed = {*allowed, *EXHAUSTED}
        with self.context.streams.held():
            try:
                async for _ in replies:
                    pass
            except grpc.aio.AioRpcError as error:
                self.record(probe, error, allowed)
            else:
                self.record(probe, None, allowed)

    async def tally_call(
        self, probe: str, call: grpc.aio.Call, allowed: Collection[Any]
    ) -> None:
        """Tally the status of a call that was cancelled or ran out of time."""
        # Every call of grpc.aio has it; the type stubs leave it out.
        debug = await call.debug_error_string()  # type: ignore[attr-defined]
        self.context.tally.record(
            probe,
            await call.code(),
            await call.details() or "",
            {*allowed, *EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED},
            debug or "",
        )

    async def own_session(self, kernel: str = "derive", tasks: int = 0) -> str:
        """A new session of this client, which may end up holding ``tasks`` tasks."""
        request = Common.CreateSessionRequest(
            default_task_option=kernel_options(kernel)
        )
        reply = await self.stub.CreateSession(request, timeout=SETUP_DEADLINE)
        self.context.sessions[reply.session_id] = tasks
        return reply.session_id


# -- garbage ------------------------------------------------------------------------


class Garbage(BadClient):
    """Bytes that are no message, and random ones, to unary Submitter methods."""

    async def round(self) -> None:
        method = self.rng.choice(_GARBAGE_METHODS)
        call: _RawUnary = self.channel.unary_unary(SUBMITTER + method)
        if self.rounds % 3:
            kind, request, allowed = "unparsable", unparsable(self.rng), INVALID
        else:
            size = self.rng.randint(1, 512)
            kind, request, allowed = "random bytes", self.rng.randbytes(size), _ANY
        await self.expect(
            f"{kind} to {method}", call(request, timeout=DEADLINE), allowed
        )


# -- unknown ids --------------------------------------------------------------------


class UnknownIds(BadClient):
    """Valid requests naming sessions, tasks and results that exist nowhere, and
    tasks for a session cancelled on purpose."""

    pause = 0.1

    async def setup(self) -> None:
        self.cancelled = await self.own_session()
        await self.stub.CancelSession(
            objects_pb2.Session(id=self.cancelled), timeout=SETUP_DEADLINE
        )

    async def round(self) -> None:
        session, task, key = fresh_id(), fresh_id(), fresh_id()
        stub = self.stub
        result = objects_pb2.ResultRequest(session=session, result_id=key)
        probes: list[_Probe] = [
            (
                "CreateSmallTasks",
                stub.CreateSmallTasks,
                small_request(session),
                _NOT_FOUND,
            ),
            (
                "GetTaskStatus",
                stub.GetTaskStatus,
                Common.GetTaskStatusRequest(task_ids=[task]),
                _NOT_FOUND,
            ),
            (
                "GetResultStatus",
                stub.GetResultStatus,
                Common.GetResultStatusRequest(session_id=session, result_ids=[key]),
                _NOT_FOUND,
            ),
            (
                "TryGetTaskOutput",
                stub.TryGetTaskOutput,
                objects_pb2.TaskOutputRequest(task_id=task),
                _NOT_FOUND,
            ),
            ("WaitForAvailability", stub.WaitForAvailability, result, _NOT_FOUND),
            (
                "CancelSession",
                stub.CancelSession,
                objects_pb2.Session(id=session),
                _NOT_FOUND,
            ),
            (
                "CreateSmallTasks into a cancelled session",
                stub.CreateSmallTasks,
                small_request(self.cancelled),
                PRECONDITION,
            ),
        ]
        await self.expect_all(probes, "naming an unknown id")
        await self._streams(session, result)

    async def _streams(self, session: str, result: objects_pb2.ResultRequest) -> None:
        for target, allowed in ((session, _NOT_FOUND), (self.cancelled, PRECONDITION)):
            with self.context.streams.held():
                await self.expect(
                    "CreateLargeTasks of an unknown or cancelled session",
                    self.stub.CreateLargeTasks(iter(_upload(target)), timeout=DEADLINE),
                    {*allowed, *EXHAUSTED},
                )
        await self.expect_stream(
            "TryGetResultStream of an unknown session",
            self.stub.TryGetResultStream(result, timeout=DEADLINE),
            _NOT_FOUND,
        )


def small_request(
    session_id: str,
    tasks: int = 1,
    payload: bytes = b"x",
    outputs: int = 1,
    options: objects_pb2.TaskOptions | None = None,
) -> Common.CreateSmallTaskRequest:
    requests = [
        objects_pb2.TaskRequest(
            expected_output_keys=[f"bad-{fresh_id()}" for _ in range(outputs)],
            payload=payload,
        )
        for _ in range(tasks)
    ]
    return Common.CreateSmallTaskRequest(
        session_id=session_id, task_options=options, task_requests=requests
    )


def _upload(session_id: str) -> list[Large]:
    """A whole, valid CreateLargeTasks stream of one task."""
    init = Large(init_request=Large.InitRequest(session_id=session_id))
    header = task_header(f"bad-{fresh_id()}")
    return [init, header, payload_chunk(b"x"), DATA_COMPLETE, LAST_TASK]


# -- malformed and oversize ---------------------------------------------------------


class Malformed(BadClient):
    """Requests that miss a field or carry a wrong value, and requests past the
    control plane's limits, into a session of this client."""

    pause = 0.3

    async def setup(self) -> None:
        self.session_id = await self.own_session()

    async def round(self) -> None:
        await self.expect_all(self._probes())
        huge = bytes([0x0F]) * (2 * 1024 * 1024)
        raw: _RawUnary = self.channel.unary_unary(SUBMITTER + "CreateSmallTasks")
        await self.expect(
            "CreateSmallTasks of 2 MiB that do not parse",
            raw(huge, timeout=DEADLINE),
            INVALID,
        )

    def _probes(self) -> list[_Probe]:
        stub, session, limits = self.stub, self.session_id, self.context.limits
        negative = objects_pb2.TaskOptions(max_retries=-1)
        endless = objects_pb2.TaskOptions()
        endless.max_duration.seconds = 10**15
        elsewhere = objects_pb2.TaskOptions(partition_id="elsewhere")
        create = Common.CreateSessionRequest
        small = stub.CreateSmallTasks
        return [
            ("CreateSession without options", stub.CreateSession, create(), INVALID),
            *[
                (
                    f"CreateSession with {what}",
                    stub.CreateSession,
                    create(default_task_option=options, partition_ids=["here"]),
                    INVALID,
                )
                for what, options in (
                    ("negative max_retries", negative),
                    ("an endless max_duration", endless),
                    ("a partition not its own", elsewhere),
                )
            ],
            ("CreateSmallTasks without session", small, small_request(""), INVALID),
            ("CreateSmallTasks of no task", small, small_request(session, 0), INVALID),
            (
                "CreateSmallTasks with negative max_retries",
                small,
                small_request(session, options=negative),
                INVALID,
            ),
            (
                "CreateSmallTasks past max_payload_size",
                small,
                small_request(session, payload=b"x" * (limits.max_payload_size + 1)),
                EXHAUSTED,
            ),
            (
                "CreateSmallTasks past max_tasks_per_request",
                small,
                small_request(session, limits.max_tasks_per_request + 1),
                EXHAUSTED,
            ),
            (
                "CreateSmallTasks past max_expected_outputs",
                small,
                small_request(session, outputs=limits.max_expected_outputs + 1),
                EXHAUSTED,
            ),
        ]
