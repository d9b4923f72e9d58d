"""One channel to the control plane, the stubs over it, and what it announced."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import grpc

from gridpod_api import (
    objects_pb2,
    sessions_service_pb2_grpc,
    submitter_service_pb2_grpc,
    tasks_service_pb2_grpc,
)
from worker_sdk._address import Address, ChannelTls
from worker_sdk._agent import CHANNEL_OPTIONS
from worker_sdk._data import DEFAULT_CHUNK_SIZE
from worker_sdk._model import Configuration
from worker_sdk.client._errors import converted

__all__ = ["Connection", "PathText", "seconds", "tls_files"]

PathText = str | os.PathLike[str]


def seconds(duration: float | timedelta | None) -> float | None:
    """A duration given as seconds or as a ``timedelta``, in seconds."""
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    return duration


def tls_files(
    ca: PathText | None, cert: PathText | None, key: PathText | None
) -> ChannelTls | None:
    """The TLS files of a client; None when it gives none."""
    if ca is None and cert is None and key is None:
        return None
    return ChannelTls(
        ca=None if ca is None else Path(ca),
        cert=None if cert is None else Path(cert),
        key=None if key is None else Path(key),
    )


class Connection:
    """The channel and stubs shared by a client and its sessions."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None,
        tls: ChannelTls | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor],
        call_timeout: float | None,
    ) -> None:
        self.address = Address.parse(address)
        target = self.address.grpc_target
        if tls is not None:
            credentials = self._tls_credentials(tls, credentials)
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

    def _tls_credentials(
        self, tls: ChannelTls, credentials: grpc.ChannelCredentials | None
    ) -> grpc.ChannelCredentials:
        if credentials is not None:
            raise ValueError(
                "give either credentials or TLS files (tls_ca, tls_cert, tls_key), "
                "not both"
            )
        if self.address.kind == "unix":
            raise ValueError(
                f"{self.address} is a unix socket, which the control plane serves "
                f"in plaintext: TLS needs a host:port address"
            )
        return tls.credentials()

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
