"""Bad clients that misuse streams: garbage inside them, CreateLargeTasks streams
that break off midway, streams never read from, and more streams at once than a
client address may hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from gridpod_api import (
    events_common_pb2,
    events_service_pb2_grpc,
    objects_pb2,
    result_status_pb2,
    submitter_service_pb2_grpc,
)
from tests.load.bad import (
    CANCELLED,
    DATA_COMPLETE,
    DEADLINE,
    EXHAUSTED,
    INVALID,
    LAST_TASK,
    OK,
    PRECONDITION,
    SETUP_DEADLINE,
    SUBMITTER,
    BadClient,
    Common,
    Large,
    fresh_id,
    kernel_options,
    payload_chunk,
    small_request,
    task_header,
    unparsable,
)
from tests.load.grid import Limits
from worker_sdk._agent import CHANNEL_OPTIONS

if TYPE_CHECKING:
    from tests.load.bad import Stub

    _Events = grpc.aio.UnaryStreamCall[
        events_common_pb2.EventSubscriptionRequest,
        events_common_pb2.EventSubscriptionResponse,
    ]

_COMPLETED = result_status_pb2.RESULT_STATUS_COMPLETED
_CHUNK = 128 * 1024
_BIG_RESULT = 4 * 1024 * 1024


class GarbageStreams(BadClient):
    """Bytes that are no message, in the streams of CreateLargeTasks, WatchResults
    and TryGetResultStream."""

    pause = 0.1

    async def setup(self) -> None:
        self.session_id = await self.own_session()

    async def round(self) -> None:
        garbage = unparsable(self.rng)
        init = Large(init_request=Large.InitRequest(session_id=self.session_id))
        upload: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = (
            self.channel.stream_unary(SUBMITTER + "CreateLargeTasks")
        )
        first = init.SerializeToString() if self.rounds % 2 else garbage
        messages = [first, garbage]
        with self.context.streams.held():
            await self.expect(
                "unparsable CreateLargeTasks message",
                upload(iter(messages), timeout=DEADLINE),
                {*INVALID, *EXHAUSTED},
            )
        watch: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = (
            self.channel.stream_stream(SUBMITTER + "WatchResults")
        )
        await self.expect_stream(
            "unparsable WatchResults request",
            watch(iter([garbage]), timeout=DEADLINE),
            INVALID,
        )
        read: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = (
            self.channel.unary_stream(SUBMITTER + "TryGetResultStream")
        )
        await self.expect_stream(
            "unparsable TryGetResultStream request",
            read(garbage, timeout=DEADLINE),
            INVALID,
        )


# -- broken uploads -----------------------------------------------------------------

_SMALL = payload_chunk(b"x" * 100)


def _inside_large_payload(key: str, limits: Limits) -> list[Large]:
    # Past the size a control plane holds in memory: it is being written.
    return [task_header(key), *[payload_chunk(b"\1" * _CHUNK)] * 3]


def _after_one_task(key: str, limits: Limits) -> list[Large]:
    return [task_header(key), _SMALL, DATA_COMPLETE, task_header(f"{key}-2"), _SMALL]


def _inside_payload(key: str, limits: Limits) -> list[Large]:
    return [task_header(key), _SMALL]


def _header_for_payload(key: str, limits: Limits) -> list[Large]:
    return [task_header(key), task_header(f"{key}-2")]


def _past_payload_limit(key: str, limits: Limits) -> list[Large]:
    # The last chunk passes the limit: nothing is written after the refusal.
    chunks = limits.max_payload_size // _CHUNK + 1
    return [task_header(key), *[payload_chunk(bytes(_CHUNK))] * chunks]


def _after_last_task(key: str, limits: Limits) -> list[Large]:
    return [task_header(key), _SMALL, DATA_COMPLETE, LAST_TASK, task_header(key)]


@dataclass(frozen=True)
class _Break:
    """One way to break a CreateLargeTasks stream off: what follows the
    init_request, how the stream ends and the statuses it may get."""

    name: str
    messages: Callable[[str, Limits], list[Large]]
    end: str  # "cancel", "close" or "stall" (until the deadline)
    allowed: frozenset[grpc.StatusCode]


_BREAKS = (
    _Break(
        "cancelled inside a large payload",
        _inside_large_payload,
        "cancel",
        frozenset(CANCELLED),
    ),
    _Break(
        "cancelled after one whole task",
        _after_one_task,
        "cancel",
        frozenset(CANCELLED),
    ),
    _Break("closed inside a payload", _inside_payload, "close", frozenset(INVALID)),
    _Break(
        "with a header where the payload goes",
        _header_for_payload,
        "close",
        frozenset(INVALID),
    ),
    _Break(
        "with a payload past the limit",
        _past_payload_limit,
        "close",
        frozenset(EXHAUSTED),
    ),
    _Break(
        "with a task after last_task", _after_last_task, "close", frozenset(INVALID)
    ),
    _Break(
        "stalled until the deadline",
        _inside_payload,
        "stall",
        frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}),
    ),
)


_STALL = next(broken for broken in _BREAKS if broken.end == "stall")


class BrokenUploads(BadClient):
    """CreateLargeTasks streams that break off midway, into a session of their
    own or into any running session of the grid, good ones included."""

    pause = 0.1
    # A stall refused for the streams of the address (StreamHog holds many) is
    # tried again, so that a short run still sees a stream's deadline.
    stall_again = False

    async def setup(self) -> None:
        self.session_id = await self.own_session()
        self.sessions = [self.session_id]

    async def round(self) -> None:
        broken = _STALL if self.stall_again else _BREAKS[self.rounds % len(_BREAKS)]
        session_id, allowed = self.session_id, set(broken.allowed)
        if self.rounds % 2:
            session_id = await self._any_session()
            # Perhaps the session a client cancelled on purpose.
            allowed |= PRECONDITION
        init = Large(init_request=Large.InitRequest(session_id=session_id))
        messages = [
            init,
            *broken.messages(f"broken-{fresh_id()}", self.context.limits),
        ]
        call = self.stub.CreateLargeTasks(
            timeout=0.5 if broken.end == "stall" else DEADLINE
        )
        with self.context.streams.held():
            await self._send(call, messages, broken.end)
            await self.tally_call(f"CreateLargeTasks {broken.name}", call, allowed)
        if broken is _STALL:
            self.stall_again = await call.code() != grpc.StatusCode.DEADLINE_EXCEEDED

    async def _any_session(self) -> str:
        # Listed again now and then: listing every session is not cheap.
        if self.rounds % 10 < 2:
            reply = await self.stub.ListSessions(
                Common.SessionFilter(), timeout=SETUP_DEADLINE
            )
            self.sessions = list(reply.session_ids)
        return self.rng.choice(self.sessions)

    async def _send(
        self,
        call: grpc.aio.StreamUnaryCall[Large, Common.CreateTaskReply],
        messages: Sequence[Large],
        end: str,
    ) -> None:
        # A stream the control plane refuses midway ends the writes early.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for message in messages:
                await call.write(message)
            if end == "close":
                await call.done_writing()
            elif end == "cancel":
                # Long enough for the control plane to take in what was sent.
                await asyncio.sleep(0.05)
                call.cancel()


# -- slow readers -------------------------------------------------------------------


class SlowReaders(BadClient):
    """Result streams and watches that are never read from, then cancelled or cut
    off with their channel."""

    pause = 0.5

    async def setup(self) -> None:
        self.session_id = await self.own_session("fill", tasks=1)
        task = objects_pb2.TaskRequest(
            expected_output_keys=["big"], payload=str(_BIG_RESULT).encode()
        )
        request = Common.CreateSmallTaskRequest(
            session_id=self.session_id, task_requests=[task]
        )
        await self.stub.CreateSmallTasks(request, timeout=SETUP_DEADLINE)
        wanted = objects_pb2.ResultRequest(session=self.session_id, result_id="big")
        reply = await self.stub.WaitForAvailability(wanted, timeout=120)
        assert reply.HasField("ok"), reply

    async def round(self) -> None:
        wanted = objects_pb2.ResultRequest(session=self.session_id, result_id="big")
        reads = [self.stub.TryGetResultStream(wanted) for _ in range(2)]
        watch = self.stub.WatchResults()
        with self.context.streams.held(len(reads) + 1):
            await self._start(reads, watch)
            await asyncio.sleep(0.5)
            for read in reads:
                read.cancel()
            if self.rounds % 2:
                watch.cancel()
            else:
                await self._cut_off()
            for read in reads:
                # A result short enough to be read ahead whole may end first.
                await self.tally_call(
                    "TryGetResultStream never read", read, {*CANCELLED, OK}
                )
            await self.tally_call("WatchResults never read", watch, CANCELLED)

    async def _start(
        self,
        reads: Sequence[
            grpc.aio.UnaryStreamCall[objects_pb2.ResultRequest, Common.ResultReply]
        ],
        watch: grpc.aio.StreamStreamCall[
            Common.WatchResultRequest, Common.WatchResultStream
        ],
    ) -> None:
        # A refusal shows in the tally of each call.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for read in reads:
                await read.read()
            request = Common.WatchResultRequest(
                watch_statuses=[_COMPLETED], result_ids=["big", fresh_id()]
            )
            await watch.write(request)

    async def _cut_off(self) -> None:
        """Close the channel under the open watch, then take a new one."""
        await self.channel.close()
        self._open()


class StreamHog(BadClient):
    """Opens more event streams at once than a client address may hold: the ones
    past the limit must be refused, the others served."""

    pause = 3.0

    async def setup(self) -> None:
        self.session_id = await self.own_session()

    async def round(self) -> None:
        limit = self.context.limits.max_streams_per_client
        count = limit + 10
        with self.context.streams.held(count):
            calls, fared = await event_streams(self.channel, self.session_id, count)
            self.context.sessions[self.session_id] += fared.pop(_TASK_CREATED)
            for call in calls:
                call.cancel()
            for call in calls:
                await self.tally_call(
                    "GetEvents past the stream limit", call, CANCELLED
                )
        if fared[OK.name] > limit:
            self.context.tally.surprises.append(
                f"StreamHog: {fared[OK.name]} streams served at once from one "
                f"address, past max_streams_per_client ({limit})"
            )


# In the tally of ``event_streams``: whether the task that woke them was created.
_TASK_CREATED = "task created"


async def event_streams(
    channel: grpc.aio.Channel, session_id: str, count: int
) -> tuple[list[_Events], Counter[str]]:
    """Open ``count`` event streams of the session at once, then create a task in
    it; the streams, and how they fared: "OK" for each that told of the task
    (so was served, with all those others), or the status it ended with."""
    request = events_common_pb2.EventSubscriptionRequest(session_id=session_id)
    events = events_service_pb2_grpc.EventsStub(channel)
    calls = [events.GetEvents(request) for _ in range(count)]
    try:
        fared = await _fare(channel, session_id, calls)
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    return calls, fared


async def _fare(
    channel: grpc.aio.Channel, session_id: str, calls: Sequence[_Events]
) -> Counter[str]:
    # A served stream sends its headers once subscribed; a refused one ends.
    await asyncio.gather(*[call.initial_metadata() for call in calls])
    stub: Stub = submitter_service_pb2_grpc.SubmitterStub(channel)
    wake = small_request(session_id, payload=b"wakes the event streams")
    created = await stub.CreateSmallTasks(wake, timeout=SETUP_DEADLINE)
    statuses = created.creation_status_list.creation_statuses
    fared = Counter(await asyncio.gather(*map(_first_event, calls)))
    fared[_TASK_CREATED] = sum(s.HasField("task_info") for s in statuses)
    return fared


async def _first_event(call: _Events) -> str:
    try:
        reply = await asyncio.wait_for(call.read(), SETUP_DEADLINE)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    except asyncio.TimeoutError:
        return "SILENT"
    return "ENDED" if reply is grpc.aio.EOF else OK.name


async def served_streams(address: str, count: int) -> Counter[str]:
    """How ``count`` event streams opened at once from ``address`` fare, as in
    ``event_streams``, on a session of their own."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub: Stub = submitter_service_pb2_grpc.SubmitterStub(channel)
        options = Common.CreateSessionRequest(
            default_task_option=kernel_options("derive")
        )
        session = await stub.CreateSession(options, timeout=SETUP_DEADLINE)
        calls, fared = await event_streams(channel, session.session_id, count)
        for call in calls:
            call.cancel()
        del fared[_TASK_CREATED]
        return fared
