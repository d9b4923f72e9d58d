"""Starting a grpc.aio server: owner-only unix sockets, TLS on TCP, and
INVALID_ARGUMENT for a request message whose bytes do not parse."""

from __future__ import annotations

import inspect
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from worker_sdk._address import Address, ServerTls, plaintext_unix
from worker_sdk._errors import WorkerSdkError

__all__ = ["checked_handler", "listen", "new_server", "prepare_socket_path"]

_Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
_Behavior = Callable[..., Any]

# The kinds of method handler, by whether requests and responses stream.
_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def new_server(
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """A grpc.aio server whose services never see a request that does not parse.

    gRPC would answer one with UNKNOWN, as if the server had failed; the caller
    gets INVALID_ARGUMENT instead, naming the method. ``interceptors`` come first:
    a call they refuse is refused before its request is looked at.
    """
    return grpc.aio.server(
        options=options, interceptors=[*interceptors, _RefuseUnparsable()]
    )


async def listen(
    server: grpc.aio.Server, address: Address, tls: ServerTls | None = None
) -> int:
    """Bind ``server`` to ``address`` and start it; returns the bound TCP port.

    A TCP address is served over TLS when ``tls`` is given; a unix socket is
    always plaintext (owner-only, its peers are the same user).
    """
    if address.kind == "unix":
        prepare_socket_path(address.target)
    credentials = None
    if tls is not None and not plaintext_unix(address, tls):
        credentials = tls.credentials()
    # Owner-only from the moment the socket file exists: no window with wider modes.
    previous_umask = os.umask(0o077)
    try:
        if credentials is None:
            port = server.add_insecure_port(address.grpc_target)
        else:
            port = server.add_secure_port(address.grpc_target, credentials)
        await server.start()
    finally:
        os.umask(previous_umask)
    if address.kind == "unix":
        os.chmod(address.target, 0o600)
    return port


def prepare_socket_path(path: str) -> None:
    """Make room for a new socket at ``path``, replacing a stale one only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise WorkerSdkError(
            f"{path} exists and is not a socket: refusing to replace it"
        )
    if _socket_accepts(path):
        raise WorkerSdkError(f"another process is already listening on {path}")
    target.unlink()


def _socket_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


# -- requests that do not parse ----------------------------------------------------


class _Unparsable:
    """Stands for a request message whose bytes do not parse."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


class _UnparsableRequest(Exception):
    """Raised where the service reads a request that does not parse.

    Not answered at once: the service's own clean-up (deleting what it stored for
    the stream) runs as this goes through it, and only then is the status sent.
    """


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return _Unparsable(error)

    return parse_or_mark


def _parsed(request: Any) -> Any:
    if isinstance(request, _Unparsable):
        raise _UnparsableRequest(str(request.error))
    return request


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    # A handle on grpc.aio's own generator, for the finally below to close.
    received = aiter(requests)
    try:
        async for request in received:
            yield _parsed(request)
    finally:
        await _close(received)


async def _close(stream: Any) -> None:
    """Close a request stream the service stopped reading, unless a task of the
    service is reading it still."""
    # The garbage collector's way costs a wake-up from another thread and a task.
    # Duck-typed: grpc.aio's generator is compiled, not a Python async generator.
    if hasattr(stream, "aclose") and not getattr(stream, "ag_running", False):
        await stream.aclose()


async def _refuse(
    context: _Context, method: str, error: _UnparsableRequest
) -> NoReturn:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"a request message of {method} does not parse: {error}",
    )
    raise AssertionError("unreachable: abort raises")


def _guarded(behavior: _Behavior, method: str, streaming_requests: bool) -> _Behavior:
    """``behavior`` refusing a request that does not parse, and of the same kind:
    gRPC tells a coroutine from an async generator by the function itself."""
    read = _parsed_stream if streaming_requests else _parsed

    if inspect.isasyncgenfunction(behavior):

        async def replies(request: Any, context: _Context) -> AsyncIterator[Any]:
            requests = None
            try:
                requests = read(request)
                async for reply in behavior(requests, context):
                    yield reply
            except _UnparsableRequest as error:
                await _refuse(context, method, error)
            finally:
                await _close(requests)

        return replies

    async def reply(request: Any, context: _Context) -> Any:
        requests = None
        try:
            requests = read(request)
            return await behavior(requests, context)
        except _UnparsableRequest as error:
            await _refuse(context, method, error)
        finally:
            await _close(requests)

    return reply


class _RefuseUnparsable(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # Method -> its handler and the guarded one, built once per method.
        self._built: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        built = self._built.get(method)
        if built is None or built[0] is not handler:
            built = (handler, _guard(handler, method))
            self._built[method] = built
        return built[1]


def _guard(handler: _Handler, method: str) -> _Handler:
    """The handler, answering a request that does not parse with INVALID_ARGUMENT."""
    streaming = (handler.request_streaming, handler.response_streaming)
    kind, factory = _FACTORIES[streaming]
    behavior = getattr(handler, kind)
    if not (
        inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
    ):
        return handler  # a plain function runs on gRPC's thread pool: left alone
    return factory(
        _guarded(behavior, method, handler.request_streaming),
        request_deserializer=_lenient(handler.request_deserializer),  # type: ignore[arg-type]
        response_serializer=handler.response_serializer,
    )


# -- checks before a call ----------------------------------------------------------


def checked_handler(
    handler: _Handler, check: Callable[[_Context], Awaitable[None]]
) -> _Handler:
    """The handler, awaiting ``check(context)`` before anything else of the call;
    ``check`` refuses the call by aborting it.

    Raises ``TypeError`` for a plain function (which would run on gRPC's thread
    pool, where the check cannot be awaited): no call may get past the check.
    """
    kind, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):

        async def replies(request: Any, context: _Context) -> AsyncIterator[Any]:
            await check(context)
            async for reply in behavior(request, context):
                yield reply

        checked: _Behavior = replies
    elif inspect.iscoroutinefunction(behavior):

        async def reply(request: Any, context: _Context) -> Any:
            await check(context)
            return await behavior(request, context)

        checked = reply
    else:
        raise TypeError(f"{behavior!r} is not async: its calls cannot be checked")
    return factory(
        checked,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
