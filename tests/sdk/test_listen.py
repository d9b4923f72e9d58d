"""The project's gRPC servers: unparsable requests refused with INVALID_ARGUMENT,
request streams a service stopped reading closed when the call ends."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridpod_api import objects_pb2
from tests.fuzz.support import short_tempdir
from worker_sdk import Address
from worker_sdk._listen import listen, new_server

_METHOD = "/test.Echo/Say"
# Field 1, length-delimited, 255 bytes long, then nothing: truncated.
_GARBAGE = b"\x0a\xff"


async def _echo(request: objects_pb2.DataChunk, context: Any) -> objects_pb2.DataChunk:
    return request


def _handlers() -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    return {
        "Say": grpc.unary_unary_rpc_method_handler(
            _echo,
            request_deserializer=objects_pb2.DataChunk.FromString,
            response_serializer=objects_pb2.DataChunk.SerializeToString,
        )
    }


@pytest.fixture
def folder() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@pytest.mark.parametrize("registration", ["generic", "registered"])
async def test_an_unparsable_request_is_refused(
    folder: Path, registration: str
) -> None:
    server = new_server([])
    if registration == "generic":
        generic = grpc.method_handlers_generic_handler("test.Echo", _handlers())
        server.add_generic_rpc_handlers([generic])
    else:
        server.add_registered_method_handlers("test.Echo", _handlers())
    address = Address("unix", str(folder / "echo.sock"))
    await listen(server, address)
    try:
        async with grpc.aio.insecure_channel(address.grpc_target) as channel:
            say: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
            say = channel.unary_unary(_METHOD)
            good = objects_pb2.DataChunk(data=b"hello").SerializeToString()
            assert await say(good) == good
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await say(_GARBAGE)
    finally:
        await server.stop(None)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _METHOD in (refused.value.details() or "")


async def _first_only(
    requests: AsyncIterator[objects_pb2.DataChunk], context: Any
) -> objects_pb2.DataChunk:
    async for request in requests:
        return request
    return objects_pb2.DataChunk()


async def _first_of_each(
    requests: AsyncIterator[objects_pb2.DataChunk], context: Any
) -> AsyncIterator[objects_pb2.DataChunk]:
    async for request in requests:
        yield request
        return


_STREAM_HANDLERS = {
    "stream-unary": grpc.stream_unary_rpc_method_handler,
    "stream-stream": grpc.stream_stream_rpc_method_handler,
}
_BEHAVIORS = {"stream-unary": _first_only, "stream-stream": _first_of_each}


async def _call_first(folder: Path, kind: str, behavior: Any) -> bytes:
    """Serve ``behavior`` as a method of ``kind``, send it three chunks, and
    return its (first) reply."""
    server = new_server([])
    handler = _STREAM_HANDLERS[kind](
        behavior,
        request_deserializer=objects_pb2.DataChunk.FromString,
        response_serializer=objects_pb2.DataChunk.SerializeToString,
    )
    server.add_registered_method_handlers("test.Echo", {"First": handler})
    address = Address("unix", str(folder / "first.sock"))
    await listen(server, address)
    chunks = [
        objects_pb2.DataChunk(data=bytes([n])).SerializeToString() for n in range(3)
    ]
    try:
        async with grpc.aio.insecure_channel(address.grpc_target) as channel:
            if kind == "stream-unary":
                unary: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
                unary = channel.stream_unary("/test.Echo/First")
                return await unary(iter(chunks))
            streaming: grpc.aio.StreamStreamMultiCallable[bytes, bytes]
            streaming = channel.stream_stream("/test.Echo/First")
            return b"".join([reply async for reply in streaming(iter(chunks))])
    finally:
        await server.stop(None)


@pytest.mark.parametrize("kind", sorted(_BEHAVIORS))
async def test_a_stream_read_in_part_is_closed_when_the_call_ends(
    folder: Path, kind: str
) -> None:
    # A generator left unfinished reaches the loop's finalizer when collected,
    # which then closes it from a task of its own.
    hooks = sys.get_asyncgen_hooks()
    finalized: list[str] = []

    def finalizer(generator: Any) -> None:
        finalized.append(generator.__qualname__)
        if hooks.finalizer is not None:
            hooks.finalizer(generator)

    sys.set_asyncgen_hooks(hooks.firstiter, finalizer)
    try:
        reply = await _call_first(folder, kind, _BEHAVIORS[kind])
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(*hooks)

    assert objects_pb2.DataChunk.FromString(reply).data == b"\x00"
    assert finalized == []


async def test_a_stream_a_task_of_the_service_still_reads_is_left_to_it(
    folder: Path,
) -> None:
    reading: list[asyncio.Future[Any]] = []

    async def first_then_read_on(
        requests: AsyncIterator[objects_pb2.DataChunk], context: Any
    ) -> objects_pb2.DataChunk:
        first = await anext(requests)
        reading.append(asyncio.ensure_future(anext(requests, None)))
        await asyncio.sleep(0)  # the task is inside its read now
        return first

    reply = await _call_first(folder, "stream-unary", first_then_read_on)

    assert objects_pb2.DataChunk.FromString(reply).data == b"\x00"
    [task] = reading
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
