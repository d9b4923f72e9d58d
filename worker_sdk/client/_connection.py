"""One channel to the control plane, the stubs over it, and what it announced."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import grpc

from gridpod_api import (
    objects_pb2,
    sessions_service_pb2_grpc,
    submitter_service_pb2_grpc,
    tasks_service_pb2_grpc,
)
from worker_sdk._address import Address
from worker_sdk._agent import CHANNEL_OPTIONS
from worker_sdk._data import DEFAULT_CHUNK_SIZE
from worker_sdk._model import Configuration
from worker_sdk.client._errors import converted

__all__ = ["Connection", "seconds"]


def seconds(duration: float | timedelta | None) -> float | None:
    """A duration given as seconds or as a ``timedelta``, in seconds."""
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    return duration


class Connection:
    """The channel and stubs shared by a client and its sessions."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor],
        call_timeout: float | None,
    ) -> None:
        self.address = Address.parse(address)
        target = self.address.grpc_target
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=CHANNEL_OPTIONS, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors
            )
        self.submitter = submitter_service_pb2_grpc.SubmitterStub(self.channel)
        self.tasks = tasks_service_pb2_grpc.TasksStub(self.channel)
        self.sessions = sessions_service_pb2_grpc.SessionsStub(self.channel)
        # The deadline of calls that answer at once; waits and streams have none.
        self.call_timeout = call_timeout
        self._configuration: Configuration | None = None

    async def configuration(self) -> Configuration:
        """What the control plane announces; asked once, then remembered."""
        if self._configuration is None:
            with converted(f"asking {self.address} for its configuration"):
                reply = await self.submitter.GetServiceConfiguration(
                    objects_pb2.Empty(), timeout=self.call_timeout
                )
            # A control plane announcing no size still needs chunks of some size.
            size = reply.data_chunk_max_size if reply.data_chunk_max_size > 0 else None
            self._configuration = Configuration(size or DEFAULT_CHUNK_SIZE)
        return self._configuration

    async def close(self) -> None:
        await self.channel.close()
