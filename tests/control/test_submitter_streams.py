"""The Submitter's streams and waits: CreateLargeTasks, result streams, waits for
availability and completion, and WatchResults."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import grpc
import pytest

from agent.backend import (
    BackendError,
    BlobRef,
    Event,
    EventsExpired,
    NotCompleted,
    TaskQuery,
    TaskStatus,
)
from gridpod_api import objects_pb2, result_status_pb2, task_status_pb2
from tests.control.submitter_support import (
    CONFIG,
    PROMPT,
    Common,
    Grid,
    complete_next,
    create_tasks,
    fail_next,
    grid_fixture,  # noqa: F401 - the fixture
    has_result,
    new_session,
    not_yet,
    options,
    refusal_of,
    serve,
    status_of,
    stored_blobs,
    take,
    task_request,
)

Large = Common.CreateLargeTaskRequest
WatchRequest = Common.WatchResultRequest
CREATED = result_status_pb2.RESULT_STATUS_CREATED
COMPLETED = result_status_pb2.RESULT_STATUS_COMPLETED
ABORTED = result_status_pb2.RESULT_STATUS_ABORTED
NOTFOUND = result_status_pb2.RESULT_STATUS_NOTFOUND
MIB = 1 << 20


# -- CreateLargeTasks -------------------------------------------------------------


def init(session_id: str, task_options: objects_pb2.TaskOptions | None = None) -> Large:
    return Large(
        init_request=Large.InitRequest(session_id=session_id, task_options=task_options)
    )


def header(*outputs: str, dependencies: Sequence[str] = ()) -> Large:
    return Large(
        init_task=objects_pb2.InitTaskRequest(
            header=objects_pb2.TaskRequestHeader(
                expected_output_keys=outputs, data_dependencies=dependencies
            )
        )
    )


def data(chunk: bytes) -> Large:
    return Large(task_payload=objects_pb2.DataChunk(data=chunk))


COMPLETE = Large(task_payload=objects_pb2.DataChunk(data_complete=True))
LAST = Large(init_task=objects_pb2.InitTaskRequest(last_task=True))


def large_task(outputs: Sequence[str], *chunks: bytes) -> list[Large]:
    return [header(*outputs), *(data(c) for c in chunks), COMPLETE]


async def stream(messages: Sequence[Large]) -> AsyncIterator[Large]:
    for message in messages:
        yield message


async def payload_of(grid: Grid, task_id: str) -> bytes:
    task = await grid.backend.get_task(task_id)
    return b"".join([c async for c in grid.backend.read_blob(task.payload.blob_id)])


async def test_create_large_tasks(grid: Grid) -> None:
    session_id = await new_session(grid, options(priority=1))
    messages = [
        init(session_id, options(priority=4)),
        *large_task(["a"], b"one ", b"two"),
        *large_task(["b", "c"]),
        header("d", dependencies=["a"]),
        data(b"x"),
        COMPLETE,
        LAST,
    ]
    reply = await grid.stub.CreateLargeTasks(stream(messages))
    statuses = reply.creation_status_list.creation_statuses
    assert [list(s.task_info.expected_output_keys) for s in statuses] == [
        ["a"],
        ["b", "c"],
        ["d"],
    ]
    task_ids = [s.task_info.task_id for s in statuses]
    assert [await payload_of(grid, t) for t in task_ids] == [b"one two", b"", b"x"]
    task = await grid.backend.get_task(task_ids[0])
    assert (task.options.priority, task.status) == (4, TaskStatus.SUBMITTED)
    dependent = await grid.backend.get_task(task_ids[2])
    assert dependent.data_dependencies == ("a",)
    assert dependent.status == TaskStatus.CREATING


async def test_create_large_tasks_duplicate_key(grid: Grid) -> None:
    session_id = await new_session(grid)
    messages = [
        init(session_id),
        *large_task(["a"], b"1"),
        *large_task(["a"], b"2"),
        LAST,
    ]
    reply = await grid.stub.CreateLargeTasks(stream(messages))
    first, second = reply.creation_status_list.creation_statuses
    assert first.WhichOneof("Status") == "task_info"
    assert "a" in second.error


async def test_create_large_tasks_keeps_the_order_of_small_and_large_payloads(
    grid: Grid,
) -> None:
    # Enough small payloads to be written in several goes, around one that streams.
    session_id = await new_session(grid)
    payloads = [str(index).encode() for index in range(70)]
    payloads[40] = b"L" * (300 * 1024)
    messages = [init(session_id)]
    for index, payload in enumerate(payloads):
        messages += large_task([f"k{index}"], payload)
    reply = await grid.stub.CreateLargeTasks(stream([*messages, LAST]))
    statuses = reply.creation_status_list.creation_statuses
    assert [s.task_info.expected_output_keys[0] for s in statuses] == [
        f"k{index}" for index in range(70)
    ]
    stored = [await payload_of(grid, s.task_info.task_id) for s in statuses]
    assert stored == payloads


async def test_a_failed_payload_write_creates_no_task(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await new_session(grid)
    write_blob = grid.backend.write_blob
    writes = 0

    async def failing(
        chunks: AsyncIterator[bytes], *, session_id: str | None = None
    ) -> BlobRef:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise BackendError("the disk is full")
        return await write_blob(chunks, session_id=session_id)

    monkeypatch.setattr(grid.backend, "write_blob", failing)
    tasks = [task_request([f"k{index}"]) for index in range(5)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_tasks(grid, session_id, *tasks)
    assert status_of(caught.value) == (grpc.StatusCode.INTERNAL, "the disk is full")
    assert await grid.backend.count_tasks(TaskQuery(session_ids=[session_id])) == {}


def _violations() -> Iterator[tuple[str, Callable[[str], list[Large]], str]]:
    task = large_task(["k1"], b"payload")
    yield "empty-stream", lambda s: [], "ended before init_request"
    yield "no-init-request", lambda s: [*task, LAST], "must start with init_request"
    yield "second-init", lambda s: [init(s), *task, init(s), LAST], "init_request"
    yield "no-task", lambda s: [init(s), LAST], "before any task"
    yield "ends-before-last", lambda s: [init(s), *task], "ended before"
    yield "ends-in-payload", lambda s: [init(s), header("k1"), data(b"x")], "payload"
    yield "data-outside-task", lambda s: [init(s), *task, data(b"x"), LAST], "data"
    yield "header-in-payload", lambda s: [init(s), header("k1"), header("k2")], "header"
    yield "data-after-last", lambda s: [init(s), *task, LAST, data(b"x")], "after"
    yield "task-after-last", lambda s: [init(s), *task, LAST, header("k2")], "after"
    empty = Large(task_payload=objects_pb2.DataChunk())
    yield "empty-chunk", lambda s: [init(s), header("k1"), empty, LAST], "task_payload"
    unset = Large(init_task=objects_pb2.InitTaskRequest(last_task=False))
    yield "last-task-false", lambda s: [init(s), *task, unset], "last_task=false"
    yield "empty-message", lambda s: [init(s), *task, Large(), LAST], "no field set"
    negative = init("s")
    negative.init_request.task_options.max_retries = -1

    def bad_options(session_id: str) -> list[Large]:
        negative.init_request.session_id = session_id
        return [negative, *task, LAST]

    yield "negative-retries", bad_options, "max_retries"


VIOLATIONS = list(_violations())


@pytest.mark.parametrize(
    ("build", "named"),
    [pytest.param(build, named, id=case) for case, build, named in VIOLATIONS],
)
async def test_create_large_tasks_grammar_violations(
    grid: Grid, build: Callable[[str], list[Large]], named: str
) -> None:
    session_id = await new_session(grid)
    code, details = await refusal_of(
        lambda: grid.stub.CreateLargeTasks(stream(build(session_id)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert named in details
    assert await grid.backend.count_tasks(TaskQuery(session_ids=[session_id])) == {}
    for key in ("k1", "k2"):
        assert not await has_result(grid.backend, session_id, key)
    assert stored_blobs(grid) == 0


async def test_a_broken_stream_deletes_the_payloads_of_earlier_tasks(
    grid: Grid,
) -> None:
    session_id = await new_session(grid)
    large = b"y" * (2 * MIB)  # written as it arrives, not held
    messages = [
        init(session_id),
        *large_task(["k1"], large),
        *large_task(["k2"], b"small"),
        header("k3"),
        header("k4"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grid.stub.CreateLargeTasks(stream(messages))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_blobs(grid) == 0


async def test_a_refused_task_leaves_no_payload(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["taken"]))
    kept = stored_blobs(grid)
    messages = [
        init(session_id),
        *large_task(["taken"], b"refused: its key exists"),
        *large_task(["fresh"], b"created"),
        LAST,
    ]
    reply = await grid.stub.CreateLargeTasks(stream(messages))
    statuses = reply.creation_status_list.creation_statuses
    assert [s.WhichOneof("Status") for s in statuses] == ["error", "task_info"]
    assert stored_blobs(grid) == kept + 1


async def test_a_broken_stream_drops_the_payload_it_was_writing(grid: Grid) -> None:
    session_id = await new_session(grid)
    chunk = b"x" * MIB
    messages = [init(session_id), header("k1"), data(chunk), data(chunk), LAST]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grid.stub.CreateLargeTasks(stream(messages))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Read in the state file itself: the backend has no listing of blobs.
    with contextlib.closing(sqlite3.connect(grid.state)) as db:
        assert db.execute("SELECT count(*) FROM blob_chunks").fetchone() == (0,)


async def test_create_large_tasks_unknown_or_cancelled_session(grid: Grid) -> None:
    messages = [init("ghost"), *large_task(["a"], b"x"), LAST]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grid.stub.CreateLargeTasks(stream(messages))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    session_id = await new_session(grid)
    await grid.stub.CancelSession(objects_pb2.Session(id=session_id))
    messages = [init(session_id), *large_task(["a"], b"x"), LAST]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grid.stub.CreateLargeTasks(stream(messages))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not await has_result(grid.backend, session_id, "a")


def _pattern(index: int) -> bytes:
    return bytes([index % 251]) * MIB


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def peak_mib() -> float:
    """The most memory held at once since the last call, in MiB."""
    peak = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.reset_peak()
    return peak


async def test_a_64_mib_payload_streams_both_ways(traced: None) -> None:
    # At the announced chunk size: a 1000-byte one would make this test slow.
    async for grid in serve(replace(CONFIG, data_chunk_max_size=84_000)):
        await _upload_and_read_back(grid, 64)


async def _upload_and_read_back(grid: Grid, mebibytes: int) -> None:
    session_id = await new_session(grid)
    sent = hashlib.sha256()

    async def messages() -> AsyncIterator[Large]:
        yield init(session_id)
        yield header("big")
        for index in range(mebibytes):
            chunk = _pattern(index)
            sent.update(chunk)
            yield data(chunk)
        yield COMPLETE
        yield LAST

    peak_mib()
    reply = await grid.stub.CreateLargeTasks(messages())
    # Client and server share this process: neither held the payload whole.
    assert peak_mib() < 16
    [status] = reply.creation_status_list.creation_statuses
    attempt = await take(grid.backend)
    assert attempt.task.task_id == status.task_info.task_id
    assert attempt.task.payload.size == mebibytes * MIB
    # The agent's part: the payload itself becomes the task's result.
    await grid.backend.stage_result(attempt, "big", attempt.task.payload)
    await grid.backend.complete(attempt)
    received = hashlib.sha256()
    request = objects_pb2.ResultRequest(session=session_id, result_id="big")
    async for piece in grid.stub.TryGetResultStream(request):
        if piece.result.WhichOneof("type") == "data_complete":
            break
        assert len(piece.result.data) <= 84_000
        received.update(piece.result.data)
    assert peak_mib() < 16
    assert received.hexdigest() == sent.hexdigest()


# -- TryGetResultStream -----------------------------------------------------------


async def result_stream(
    grid: Grid, session_id: str, key: str
) -> list[Common.ResultReply]:
    request = objects_pb2.ResultRequest(session=session_id, result_id=key)
    return [reply async for reply in grid.stub.TryGetResultStream(request)]


async def test_result_stream_of_a_completed_result(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a", "empty"]))
    await complete_next(grid.backend, {"a": b"z" * 2500, "empty": b""})
    replies = await result_stream(grid, session_id, "a")
    assert [len(r.result.data) for r in replies[:-1]] == [1000, 1000, 500]
    assert replies[-1].result.data_complete
    [only] = await result_stream(grid, session_id, "empty")
    assert only.result.WhichOneof("type") == "data_complete"


async def test_result_stream_not_completed_aborted_unknown(grid: Grid) -> None:
    session_id = await new_session(grid)
    owner, failing = await create_tasks(
        grid, session_id, task_request(["waiting"]), task_request(["lost"])
    )
    await take(grid.backend)
    [reply] = await result_stream(grid, session_id, "waiting")
    assert reply.not_completed_task == owner
    await fail_next(grid.backend, "out of memory")
    [reply] = await result_stream(grid, session_id, "lost")
    assert reply.error.task_id == failing
    [error] = reply.error.errors
    assert error.task_status == task_status_pb2.TASK_STATUS_ERROR
    assert error.detail == "out of memory"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await result_stream(grid, session_id, "ghost")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await result_stream(grid, "", "ghost")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_result_stream_of_a_result_completed_while_asked(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]))
    read_result = grid.backend.read_result

    async def completed_meanwhile(session_id: str, key: str) -> AsyncIterator[bytes]:
        monkeypatch.setattr(grid.backend, "read_result", read_result)
        await complete_next(grid.backend, {"a": b"done"})
        raise NotCompleted(f"result {key!r} is CREATED: it has no data")
        yield b""  # an async generator, as the backend's

    monkeypatch.setattr(grid.backend, "read_result", completed_meanwhile)
    first, last = await result_stream(grid, session_id, "a")
    assert first.result.data == b"done"
    assert last.result.data_complete


# -- WaitForAvailability ----------------------------------------------------------


async def test_wait_for_availability(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    request = objects_pb2.ResultRequest(session=session_id, result_id="a")
    call = asyncio.ensure_future(grid.stub.WaitForAvailability(request))
    await not_yet(call)
    await complete_next(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert reply.WhichOneof("type") == "ok"
    await fail_next(grid.backend, "bad input")
    request = objects_pb2.ResultRequest(session=session_id, result_id="b")
    reply = await asyncio.wait_for(grid.stub.WaitForAvailability(request), PROMPT)
    assert reply.error.errors[0].detail == "bad input"
    request = objects_pb2.ResultRequest(session=session_id, result_id="ghost")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grid.stub.WaitForAvailability(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert grid.backend.open_subscriptions == 0


# -- WaitForCompletion ------------------------------------------------------------


def wait_request(
    session_id: str, *, on_error: bool = False, on_cancel: bool = False
) -> Common.WaitRequest:
    return Common.WaitRequest(
        filter=Common.TaskFilter(
            session=Common.TaskFilter.IdsRequest(ids=[session_id])
        ),
        stop_on_first_task_error=on_error,
        stop_on_first_task_cancellation=on_cancel,
    )


def counts(reply: objects_pb2.Count) -> dict[int, int]:
    return {value.status: value.count for value in reply.values}


async def test_wait_for_completion_returns_after_the_last_task(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    call = asyncio.ensure_future(grid.stub.WaitForCompletion(wait_request(session_id)))
    await complete_next(grid.backend)
    await not_yet(call)
    await complete_next(grid.backend)
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {task_status_pb2.TASK_STATUS_COMPLETED: 2}
    assert grid.backend.open_subscriptions == 0


async def test_wait_for_completion_wakes_on_another_process(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]))
    call = asyncio.ensure_future(grid.stub.WaitForCompletion(wait_request(session_id)))
    await not_yet(call, 0.1)
    other = grid.open_backend()
    try:
        await complete_next(other)
        reply = await asyncio.wait_for(call, PROMPT)
    finally:
        await other.close()
    assert counts(reply) == {task_status_pb2.TASK_STATUS_COMPLETED: 1}


async def test_a_retried_error_does_not_stop_the_wait(grid: Grid) -> None:
    session_id = await new_session(grid, options(max_retries=1))
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    call = asyncio.ensure_future(
        grid.stub.WaitForCompletion(wait_request(session_id, on_error=True))
    )
    retried = await fail_next(grid.backend, "first try")
    assert retried.retry_of_ids
    await not_yet(call)
    await complete_next(grid.backend)
    await not_yet(call)
    await fail_next(grid.backend, "second try")
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply) == {
        task_status_pb2.TASK_STATUS_ERROR: 2,
        task_status_pb2.TASK_STATUS_COMPLETED: 1,
    }


async def test_wait_for_completion_stops_on_a_final_error(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    patient = asyncio.ensure_future(
        grid.stub.WaitForCompletion(wait_request(session_id))
    )
    hasty = asyncio.ensure_future(
        grid.stub.WaitForCompletion(wait_request(session_id, on_error=True))
    )
    await fail_next(grid.backend)
    reply = await asyncio.wait_for(hasty, PROMPT)
    assert counts(reply) == {
        task_status_pb2.TASK_STATUS_ERROR: 1,
        task_status_pb2.TASK_STATUS_SUBMITTED: 1,
    }
    await not_yet(patient, 0.1)
    await complete_next(grid.backend)
    await asyncio.wait_for(patient, PROMPT)


async def test_wait_for_completion_stops_on_a_cancellation(grid: Grid) -> None:
    session_id = await new_session(grid)
    first, _ = await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"])
    )
    call = asyncio.ensure_future(
        grid.stub.WaitForCompletion(wait_request(session_id, on_cancel=True))
    )
    await not_yet(call, 0.1)
    await grid.backend.cancel_tasks([first])
    reply = await asyncio.wait_for(call, PROMPT)
    assert counts(reply)[task_status_pb2.TASK_STATUS_CANCELLED] == 1


async def test_a_cancelled_wait_closes_its_subscription(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]))
    call = grid.stub.WaitForCompletion(wait_request(session_id))
    waiting = asyncio.ensure_future(call)
    await not_yet(waiting, 0.1)
    assert grid.backend.open_subscriptions == 1
    call.cancel()
    for _ in range(200):
        if grid.backend.open_subscriptions == 0:
            break
        await asyncio.sleep(0.01)
    assert grid.backend.open_subscriptions == 0


# -- WatchResults -----------------------------------------------------------------


class Watch:
    """One WatchResults call: requests are sent as the test goes."""

    def __init__(self, grid: Grid) -> None:
        self._requests: asyncio.Queue[WatchRequest | None] = asyncio.Queue()
        self._reading: asyncio.Future[object] | None = None
        self.call = grid.stub.WatchResults(self._send())

    async def _send(self) -> AsyncIterator[WatchRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def send(
        self, *keys: str, fetch: Sequence[int] = (), watch: Sequence[int] = ()
    ) -> None:
        request = WatchRequest(result_ids=keys)
        request.fetch_statuses.extend(fetch)  # type: ignore[arg-type]
        request.watch_statuses.extend(watch)  # type: ignore[arg-type]
        self._requests.put_nowait(request)

    def close(self) -> None:
        self._requests.put_nowait(None)

    async def next(self) -> tuple[int, tuple[str, ...]]:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.call.read())
        # Cancelling a read would cancel the call: a slow one fails the test.
        reply = await asyncio.wait_for(self._reading, PROMPT)
        self._reading = None
        assert isinstance(reply, Common.WatchResultStream), reply
        return reply.status, tuple(sorted(reply.result_ids))

    async def seen(self, count: int) -> set[tuple[int, str]]:
        """The next ``count`` (status, key) pairs, however the replies group them."""
        pairs: set[tuple[int, str]] = set()
        while len(pairs) < count:
            status, keys = await self.next()
            pairs.update((status, key) for key in keys)
        return pairs

    async def quiet(self, delay: float = 0.2) -> None:
        """Check that nothing comes for ``delay`` seconds."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.call.read())
        done, _ = await asyncio.wait({self._reading}, timeout=delay)
        assert not done, f"unexpected reply: {self._reading.result()}"

    async def end(self) -> None:
        """Half-close, and check that the server ends the stream."""
        self.close()
        reading = self._reading or asyncio.ensure_future(self.call.read())
        assert await asyncio.wait_for(reading, PROMPT) is grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


async def test_watch_results_initial_statuses_and_updates(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    await complete_next(grid.backend)
    watch = Watch(grid)
    watch.send("a", "b", "ghost")
    assert await watch.seen(3) == {
        (COMPLETED, "a"),
        (CREATED, "b"),
        (NOTFOUND, "ghost"),
    }
    await complete_next(grid.backend)
    assert await watch.next() == (COMPLETED, ("b",))
    await create_tasks(grid, session_id, task_request(["ghost"]))
    assert await watch.next() == (CREATED, ("ghost",))
    await watch.end()
    assert grid.backend.open_subscriptions == 0


async def test_watch_results_filters_fetch_and_watch_statuses(grid: Grid) -> None:
    session_id = await new_session(grid)
    await create_tasks(
        grid, session_id, task_request(["a"]), task_request(["b"]), task_request(["c"])
    )
    await complete_next(grid.backend)
    watch = Watch(grid)
    watch.send("a", "b", "c", "ghost", fetch=[CREATED], watch=[ABORTED])
    assert await watch.next() == (CREATED, ("b", "c"))
    await complete_next(grid.backend)
    await watch.quiet()
    await fail_next(grid.backend)
    assert await watch.next() == (ABORTED, ("c",))
    await watch.end()


async def test_watch_results_adds_keys_from_each_request(grid: Grid) -> None:
    first = await new_session(grid)
    second = await new_session(grid)
    await create_tasks(grid, first, task_request(["a"]))
    await create_tasks(grid, second, task_request(["b"]))
    watch = Watch(grid)
    watch.send("a")
    assert await watch.next() == (CREATED, ("a",))
    watch.send("b", watch=[COMPLETED])
    assert await watch.next() == (CREATED, ("b",))
    await complete_next(grid.backend)
    await complete_next(grid.backend)
    assert await watch.seen(2) == {(COMPLETED, "a"), (COMPLETED, "b")}
    await watch.end()


async def test_watch_results_catches_up_after_expired_events(
    grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await new_session(grid)
    await create_tasks(grid, session_id, task_request(["a"]), task_request(["b"]))
    watch = Watch(grid)
    watch.send("a", "b")
    assert await watch.next() == (CREATED, ("a", "b"))
    read_events = grid.backend.read_events

    async def expired(after: int, **kwargs: Any) -> list[Event]:
        monkeypatch.setattr(grid.backend, "read_events", read_events)
        raise EventsExpired("dropped by retention")

    monkeypatch.setattr(grid.backend, "read_events", expired)
    await complete_next(grid.backend)
    assert await watch.next() == (COMPLETED, ("a",))
    await complete_next(grid.backend)
    assert await watch.next() == (COMPLETED, ("b",))
    await watch.end()


async def test_a_cancelled_watch_closes_its_subscription(grid: Grid) -> None:
    watch = Watch(grid)
    watch.send("ghost")
    assert await watch.next() == (NOTFOUND, ("ghost",))
    watch.call.cancel()
    for _ in range(200):
        if grid.backend.open_subscriptions == 0:
            break
        await asyncio.sleep(0.01)
    assert grid.backend.open_subscriptions == 0
