"""The project's gRPC servers: a request that does not parse is answered with
INVALID_ARGUMENT naming the method, however the service was registered, and a
request stream that a service stops reading is closed when the call ends."""

from __future__ import annotations

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


async def test_a_stream_read_in_part_is_closed_when_the_call_ends(
    folder: Path,
) -> None:
    server = new_server([])
    handler = grpc.stream_unary_rpc_method_handler(
        _first_only,
        request_deserializer=objects_pb2.DataChunk.FromString,
        response_serializer=objects_pb2.DataChunk.SerializeToString,
    )
    server.add_registered_method_handlers("test.Echo", {"First": handler})
    address = Address("unix", str(folder / "first.sock"))
    await listen(server, address)
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
        async with grpc.aio.insecure_channel(address.grpc_target) as channel:
            first: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
            first = channel.stream_unary("/test.Echo/First")
            chunks = [objects_pb2.DataChunk(data=bytes([n])) for n in range(3)]
            reply = await first(iter([c.SerializeToString() for c in chunks]))
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(*hooks)
        await server.stop(None)

    assert objects_pb2.DataChunk.FromString(reply).data == b"\x00"
    assert finalized == []
