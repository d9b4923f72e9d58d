"""The control plane's server: addresses, health checking, reflection, stopping."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import (
    reflection_pb2,
    reflection_pb2_grpc,
)

from agent._errors import AgentError
from agent.backend import Backend, open_backend
from agent.control import SERVED_SERVICES, ControlPlane, ControlPlaneConfig
from gridpod_api import (
    events_common_pb2,
    events_service_pb2_grpc,
    sessions_common_pb2,
    sessions_service_pb2_grpc,
)
from tests.control.conftest import RunningControlPlane, new_session, serving
from worker_sdk._address import Address

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(channel: grpc.aio.Channel) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(channel)


async def test_serving_for_the_server_and_each_service(
    control_plane: RunningControlPlane,
) -> None:
    stub = health(control_plane.channel)
    for name in ("", *SERVED_SERVICES):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == _SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_not_serving_once_stopping(backend_url: str, socket_dir: Path) -> None:
    async with serving(backend_url, ControlPlaneConfig(), socket_dir) as running:
        watch = health(running.channel).Watch(health_pb2.HealthCheckRequest())
        statuses = aiter(watch)
        assert (await anext(statuses)).status == _SERVING
        stopping = asyncio.create_task(running.plane.stop(grace=0.3))
        assert (await asyncio.wait_for(anext(statuses), 5)).status == _NOT_SERVING
        await stopping


async def test_reflection_lists_every_service(
    control_plane: RunningControlPlane,
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(control_plane.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    reply = await anext(aiter(replies))
    names = {service.name for service in reply.list_services_response.service}
    assert names == {
        *SERVED_SERVICES,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert "armonik.api.grpc.v1.submitter.Submitter" in names


async def test_tcp_port_zero_tells_the_real_port(
    backend: Backend, backend_url: str
) -> None:
    served = open_backend(backend_url)
    plane = ControlPlane(served, ControlPlaneConfig(), Address.parse("127.0.0.1:0"))
    await plane.start()
    try:
        assert plane.port > 0
        assert plane.bound_address == Address("tcp", f"127.0.0.1:{plane.port}")
        session_id = await new_session(backend)
        async with grpc.aio.insecure_channel(
            plane.bound_address.grpc_target
        ) as channel:
            stub = sessions_service_pb2_grpc.SessionsStub(channel)
            got = await stub.GetSession(
                sessions_common_pb2.GetSessionRequest(session_id=session_id)
            )
        assert got.session.session_id == session_id
        taken = ControlPlane(served, ControlPlaneConfig(), plane.bound_address)
        with pytest.raises(AgentError, match=str(plane.port)):
            await taken.start()
    finally:
        await plane.stop(grace=0)
        await served.close()


async def test_the_unix_socket_is_owner_only_and_removed(
    backend_url: str, socket_dir: Path
) -> None:
    async with serving(backend_url, ControlPlaneConfig(), socket_dir) as running:
        path = Path(running.plane.bound_address.target)
        assert running.plane.port == 0
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not path.exists()


async def test_stopping_ends_event_streams_at_once(
    backend: Backend, backend_url: str, socket_dir: Path
) -> None:
    session_id = await new_session(backend)
    async with serving(backend_url, ControlPlaneConfig(), socket_dir) as running:
        stub = events_service_pb2_grpc.EventsStub(running.channel)
        call = stub.GetEvents(
            events_common_pb2.EventSubscriptionRequest(session_id=session_id)
        )
        await call.initial_metadata()
        began = time.monotonic()
        await running.plane.stop(grace=30)
        assert await call.code() == grpc.StatusCode.OK
        assert time.monotonic() - began < 5
        await running.plane.stop(grace=30)  # a second stop changes nothing
