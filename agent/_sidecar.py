"""The agent sidecar: the Agent service, the task loop and the health endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from agent._config import AgentConfig
from agent._http import HealthServer
from agent._loop import TaskLoop
from agent._registry import AttemptRegistry
from agent._service import AgentLimits, AgentService
from agent._worker import WorkerLink
from agent.backend import Backend
from gridpod_api import agent_service_pb2_grpc
from worker_sdk._agent import CHANNEL_OPTIONS
from worker_sdk._listen import listen, new_server

__all__ = ["Sidecar"]

logger = logging.getLogger(__name__)


class Sidecar:
    """One agent: serves its worker until ``drain()``, then releases what it holds."""

    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        limits: AgentLimits | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.limits = limits or AgentLimits()
        self._registry = AttemptRegistry()
        self._worker = WorkerLink(
            config.worker_address,
            backend,
            config.data_chunk_max_size,
            config.worker_tls,
        )
        self.loop = TaskLoop(config, backend, self._worker, self._registry)
        self._server: grpc.aio.Server | None = None
        self._health: HealthServer | None = None

    def is_ready(self) -> bool:
        return self.loop.ready

    async def _start_agent_service(self) -> None:
        server = new_server(CHANNEL_OPTIONS)
        service = AgentService(
            self.backend,
            self._registry,
            self.config.data_chunk_max_size,
            self.limits,
            busy_poll=self.loop.busy_poll,
        )
        agent_service_pb2_grpc.add_AgentServicer_to_server(service, server)
        address = self.config.listen_address
        await listen(server, address, self.config.tls)
        self._server = server
        logger.info(
            "agent %s serving on %s for the worker at %s",
            self.config.agent_id,
            address,
            self.config.worker_address,
        )

    async def run(self) -> None:
        await self._start_agent_service()
        if self.config.health_port is not None:
            self._health = HealthServer(
                "0.0.0.0", self.config.health_port, self.is_ready
            )
            await self._health.start()
        try:
            await self.loop.run()
        finally:
            await self.stop()

    def drain(self) -> None:
        self.loop.drain()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        if self._health is not None:
            await self._health.stop()
        await self._worker.close()
        await self.backend.close()
        if self.config.listen_address.kind == "unix":
            Path(self.config.listen_address.target).unlink(missing_ok=True)
        logger.info("agent %s stopped", self.config.agent_id)
