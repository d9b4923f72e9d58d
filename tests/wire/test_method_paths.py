"""Every RPC of the reference, called by its path over a real socket, reaches ours.

The client side is built from ArmoniK's descriptors and the server side from our
generated servicers, so a wrong package, service or method name, or a wrong streaming
flag, shows as UNIMPLEMENTED or a broken call.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message

import gridpod_api
from tests.wire import reference
from tests.wire.ours import message_class, private_pool
from tests.wire.samples import fill

Method = descriptor_pb2.MethodDescriptorProto


def _our_class(type_name: str) -> type[Message]:
    return message_class(descriptor_pool.Default(), type_name.lstrip("."))


class _Recorder:
    """Answers every method of a service with a filled reply and keeps what it got."""

    def __init__(self) -> None:
        self.received: dict[str, list[bytes]] = {}

    def handler(self, service: str, method: Method) -> Callable[..., Any]:
        reply_class = _our_class(method.output_type)

        def keep(requests: Iterator[Message]) -> None:
            got = [r.SerializeToString(deterministic=True) for r in requests]
            self.received[f"{service}/{method.name}"] = got

        def unary(request: Message, context: grpc.ServicerContext) -> Message:
            keep(iter([request]))
            return fill(reply_class())

        def client_stream(requests: Iterator[Message], context: Any) -> Message:
            keep(requests)
            return fill(reply_class())

        def server_stream(request: Message, context: Any) -> Iterator[Message]:
            keep(iter([request]))
            yield fill(reply_class())
            yield fill(reply_class())

        def both(requests: Iterator[Message], context: Any) -> Iterator[Message]:
            keep(requests)
            yield fill(reply_class())

        handlers: dict[tuple[bool, bool], Callable[..., Any]] = {
            (False, False): unary,
            (True, False): client_stream,
            (False, True): server_stream,
            (True, True): both,
        }
        return handlers[(method.client_streaming, method.server_streaming)]


def _register_all(server: grpc.Server, services: list[Any], recorder: _Recorder) -> int:
    count = 0
    for info in pkgutil.iter_modules(gridpod_api.__path__):
        if not info.name.endswith("_pb2_grpc"):
            continue
        module = importlib.import_module(f"gridpod_api.{info.name}")
        for service in services:
            add = getattr(module, f"add_{service.name}Servicer_to_server", None)
            if add is None:
                continue
            servicer = type(service.name, (), {})()
            for method in service.method:
                setattr(servicer, method.name, recorder.handler(service.name, method))
            add(servicer, server)
            count += 1
    return count


@pytest.fixture(scope="module")
def ref_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    return reference.reference_descriptors()


def _call(
    channel: grpc.Channel, path: str, method: Method, request: bytes, ref_pool: Any
) -> list[bytes]:
    reply_class = message_class(ref_pool, method.output_type.lstrip("."))
    kind: Any = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    call = kind(path, request_serializer=None, response_deserializer=None)
    argument: Any = iter([request, request]) if method.client_streaming else request
    outcome = call(argument, timeout=10)
    replies = list(outcome) if method.server_streaming else [outcome]
    # Parse with the reference classes, so the reply is read as ArmoniK's client would.
    return [
        reply_class.FromString(r).SerializeToString(deterministic=True) for r in replies
    ]


def test_every_reference_method_reaches_our_servicer(
    ref_files: dict[str, descriptor_pb2.FileDescriptorProto], tmp_path: Path
) -> None:
    services = [(f, s) for f in ref_files.values() for s in f.service]
    ref_pool = private_pool(ref_files)
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    assert _register_all(server, [s for _, s in services], recorder) == len(services)
    address = f"unix://{tmp_path / 'wire.sock'}"
    server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            for file, service in services:
                for method in service.method:
                    path = f"/{file.package}.{service.name}/{method.name}"
                    request_class = message_class(ref_pool, method.input_type[1:])
                    request = fill(request_class()).SerializeToString(
                        deterministic=True
                    )
                    replies = _call(channel, path, method, request, ref_pool)
                    sent = 2 if method.client_streaming else 1
                    assert (
                        recorder.received[f"{service.name}/{method.name}"]
                        == [request] * sent
                    ), path
                    expected = fill(
                        message_class(ref_pool, method.output_type[1:])()
                    ).SerializeToString(deterministic=True)
                    assert replies and all(r == expected for r in replies), path
    finally:
        server.stop(None)
