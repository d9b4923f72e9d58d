"""The control plane's gRPC server: ArmoniK's client services over one backend,
with standard health checking and server reflection, over TLS and with each
call's permission checked when configured so."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import (
    health,
    health_pb2,
    health_pb2_grpc,
)
from grpc_reflection.v1alpha import reflection

from agent._errors import AgentError
from agent.backend import Backend
from agent.control._access import Access
from agent.control._applications import ApplicationsService
from agent.control._auth import AuthenticationService
from agent.control._config import ControlPlaneConfig
from agent.control._events import EventsService
from agent.control._limits import OpenStreams
from agent.control._policy import permissions
from agent.control._results import ResultsService
from agent.control._sessions import SessionsService
from agent.control._submitter import SubmitterService
from agent.control._tasks import TasksService
from gridpod_api import (
    applications_service_pb2,
    applications_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    events_service_pb2,
    events_service_pb2_grpc,
    results_service_pb2,
    results_service_pb2_grpc,
    sessions_service_pb2,
    sessions_service_pb2_grpc,
    submitter_service_pb2,
    submitter_service_pb2_grpc,
    tasks_service_pb2,
    tasks_service_pb2_grpc,
)
from worker_sdk._address import Address
from worker_sdk._agent import CHANNEL_OPTIONS
from worker_sdk._listen import listen, new_server

__all__ = ["PERMISSIONS", "SERVED_SERVICES", "ControlPlane"]

logger = logging.getLogger(__name__)

# No size limit on messages, as on the agent's channels; and a port already taken
# is an error, where gRPC's default SO_REUSEPORT would let two servers share it.
_SERVER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]


@dataclass(frozen=True)
class _Service:
    """One of the API's services, and how to serve it."""

    descriptor: ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]


_SUBMITTER = _Service(
    submitter_service_pb2.DESCRIPTOR.services_by_name["Submitter"],
    submitter_service_pb2_grpc.add_SubmitterServicer_to_server,
)
_SESSIONS = _Service(
    sessions_service_pb2.DESCRIPTOR.services_by_name["Sessions"],
    sessions_service_pb2_grpc.add_SessionsServicer_to_server,
)
_TASKS = _Service(
    tasks_service_pb2.DESCRIPTOR.services_by_name["Tasks"],
    tasks_service_pb2_grpc.add_TasksServicer_to_server,
)
_RESULTS = _Service(
    results_service_pb2.DESCRIPTOR.services_by_name["Results"],
    results_service_pb2_grpc.add_ResultsServicer_to_server,
)
_APPLICATIONS = _Service(
    applications_service_pb2.DESCRIPTOR.services_by_name["Applications"],
    applications_service_pb2_grpc.add_ApplicationsServicer_to_server,
)
_EVENTS = _Service(
    events_service_pb2.DESCRIPTOR.services_by_name["Events"],
    events_service_pb2_grpc.add_EventsServicer_to_server,
)
_AUTHENTICATION = _Service(
    auth_service_pb2.DESCRIPTOR.services_by_name["Authentication"],
    auth_service_pb2_grpc.add_AuthenticationServicer_to_server,
)

_ALL = (
    _SUBMITTER,
    _SESSIONS,
    _TASKS,
    _RESULTS,
    _APPLICATIONS,
    _EVENTS,
    _AUTHENTICATION,
)

# Full names of the API's services a control plane serves, as health checking and
# reflection name them.
SERVED_SERVICES = tuple(service.descriptor.full_name for service in _ALL)
# Every permission, in ArmoniK's names: what the anonymous user has.
PERMISSIONS = tuple(permissions(service.descriptor for service in _ALL))


class ControlPlane:
    """Serves the grid's clients from ``backend`` on ``listen`` until ``stop``.

    Started once and stopped once. The backend stays the caller's: stopping does
    not close it. Raises ``AgentError`` for authentication on a unix socket, where
    no certificate names the caller, and ``AuthConfigError`` for a permissions
    file that grants a permission that does not exist.
    """

    def __init__(
        self, backend: Backend, config: ControlPlaneConfig, listen: Address
    ) -> None:
        if config.authenticates and listen.kind == "unix":
            raise AgentError(
                f"cannot authenticate clients on {listen}: a unix socket has no "
                f"TLS, so no certificate names them; listen on host:port"
            )
        self._backend = backend
        self._config = config
        self._listen = listen
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._access = Access(
            (service.descriptor for service in _ALL),
            authenticate=config.authenticates,
            config=config.auth,
        )
        # One count of each client's open streams, whichever service they call.
        self._streams = OpenStreams(config)
        self._events = EventsService(backend, config, self._streams, self._access)
        self._port = 0

    @property
    def port(self) -> int:
        """The TCP port it listens on once started (the real one for port 0);
        0 on a unix socket."""
        return self._port

    @property
    def bound_address(self) -> Address:
        """Where clients reach it once started."""
        if self._listen.kind == "unix":
            return self._listen
        host = self._listen.target.rpartition(":")[0]
        return Address("tcp", f"{host}:{self._port}")

    def _servicers(self) -> list[tuple[_Service, object]]:
        backend, config, access = self._backend, self._config, self._access
        return [
            (_SUBMITTER, SubmitterService(backend, config, self._streams, access)),
            (_SESSIONS, SessionsService(backend, config, access)),
            (_TASKS, TasksService(backend, config, access)),
            (_RESULTS, ResultsService(backend, config, access)),
            (_APPLICATIONS, ApplicationsService(backend, config)),
            (_EVENTS, self._events),
            (_AUTHENTICATION, AuthenticationService(access)),
        ]

    async def _add_health_and_reflection(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        # The whole server ("") is SERVING from the start; each service joins it.
        for name in SERVED_SERVICES:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (*SERVED_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    async def start(self) -> None:
        """Listen and serve; raises ``AgentError`` if the address cannot be bound
        and ``WorkerSdkError`` if a TLS file cannot be read."""
        # Without authentication, no check: every caller may make every call.
        checks = [self._access.interceptor()] if self._access.authenticates else []
        server = new_server(_SERVER_OPTIONS, checks)
        for service, servicer in self._servicers():
            service.add_to_server(servicer, server)
        await self._add_health_and_reflection(server)
        try:
            port = await listen(server, self._listen, self._config.tls)
        except RuntimeError as error:
            raise AgentError(f"cannot listen on {self._listen}: {error}") from error
        # gRPC answers 1 for a unix socket, which has no port.
        self._port = port if self._listen.kind == "tcp" else 0
        self._server = server
        logger.info(
            "control plane serving on %s%s",
            self.bound_address,
            self._security(),
            extra={"address": str(self.bound_address)},
        )

    def _security(self) -> str:
        if self._config.tls is None or self._listen.kind == "unix":
            return ""
        if not self._access.authenticates:
            return " over TLS"
        return " over mutual TLS, checking each call's permission"

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, end the event streams, and give the calls still
        running ``grace`` seconds to finish; stopping twice is harmless."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        self._events.close()
        await server.stop(grace)
        if self._listen.kind == "unix":
            Path(self._listen.target).unlink(missing_ok=True)
        logger.info("control plane on %s stopped", self.bound_address)
