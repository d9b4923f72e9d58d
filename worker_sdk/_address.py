"""Addresses of the gRPC channels (unix sockets or TCP endpoints), and the TLS
files that secure a TCP one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from worker_sdk._errors import WorkerSdkError

__all__ = [
    "DEFAULT_AGENT_ADDRESS",
    "DEFAULT_WORKER_ADDRESS",
    "Address",
    "ChannelTls",
    "ServerTls",
    "open_channel",
    "plaintext_unix",
]

logger = logging.getLogger(__name__)

DEFAULT_WORKER_ADDRESS = "/cache/armonik_worker.sock"
DEFAULT_AGENT_ADDRESS = "/cache/armonik_agent.sock"

# ArmoniK's values of ComputePlane__*__SocketType.
_SOCKET_TYPES = {"unixdomainsocket": "unix", "tcp": "tcp"}


@dataclass(frozen=True)
class Address:
    """Where a gRPC server listens or a channel connects."""

    kind: Literal["unix", "tcp"]
    target: str  # the socket's path, or host:port

    @classmethod
    def parse(cls, text: str, socket_type: str | None = None) -> Address:
        """Read ``unix:///path``, a bare ``/path`` or ``host:port``.

        ``socket_type`` is ArmoniK's ``UnixDomainSocket`` or ``Tcp``, and settles the
        kind of an address that could be read either way.
        """
        text = text.strip()
        kind = _SOCKET_TYPES.get((socket_type or "").lower())
        if socket_type and kind is None:
            raise ValueError(
                f"unknown socket type {socket_type!r}: use UnixDomainSocket or Tcp"
            )
        if text.startswith("unix:"):
            path = text[len("unix://") :] if text.startswith("unix://") else text[5:]
            return cls._unix(path, text)
        if kind == "unix" or text.startswith(("/", "./", "../")):
            return cls._unix(text, text)
        for scheme in ("http://", "https://", "dns:///"):
            text = text.removeprefix(scheme)
        return cls._tcp(text)

    @classmethod
    def _unix(cls, path: str, original: str) -> Address:
        if not path:
            raise ValueError(f"{original!r} names no socket path")
        return cls("unix", path)

    @classmethod
    def _tcp(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"{text!r} is not an address: use unix:///path, /path or host:port"
            )
        return cls("tcp", text)

    @property
    def grpc_target(self) -> str:
        """The address as gRPC's ``add_insecure_port`` and channels take it."""
        return f"unix:{self.target}" if self.kind == "unix" else self.target

    def __str__(self) -> str:
        return f"unix://{self.target}" if self.kind == "unix" else self.target


# -- TLS of TCP channels -----------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise WorkerSdkError(f"cannot read the TLS {what} {path}: {error}") from error


@dataclass(frozen=True, kw_only=True)
class ServerTls:
    """The certificate (PEM, with its chain) and key a TCP server presents.

    With ``client_ca``, the server also requires each client to present a
    certificate that this CA signed: mutual TLS.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Read the files; raises ``WorkerSdkError`` naming one that cannot be read."""
        client_ca = self.client_ca
        return grpc.ssl_server_credentials(
            [(_read(self.key, "key"), _read(self.cert, "certificate"))],
            root_certificates=None if client_ca is None else _read(client_ca, "CA"),
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True, kw_only=True)
class ChannelTls:
    """What a TLS channel trusts and, for mutual TLS, the certificate it presents.

    ``ca`` is the CA that signed the server's certificate (PEM); None trusts the
    system's roots. ``cert`` and ``key`` go together.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "a client certificate needs its key, and a key its certificate: "
                "give both or neither"
            )

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files; raises ``WorkerSdkError`` naming one that cannot be read."""
        ca, cert, key = self.ca, self.cert, self.key
        return grpc.ssl_channel_credentials(
            root_certificates=None if ca is None else _read(ca, "CA"),
            private_key=None if key is None else _read(key, "key"),
            certificate_chain=None if cert is None else _read(cert, "certificate"),
        )


def plaintext_unix(address: Address, tls: object | None) -> bool:
    """True when TLS was asked for a unix socket, which stays plaintext: it is
    owner-only, and a peer on it is the same user. Logged, since the files given
    are then unused."""
    if tls is None or address.kind != "unix":
        return False
    logger.warning("%s is a unix socket: it stays plaintext, TLS files unused", address)
    return True


def open_channel(
    address: Address,
    tls: ChannelTls | None,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to ``address``, over TLS when ``tls`` is given and it is TCP."""
    target = address.grpc_target
    if tls is None or plaintext_unix(address, tls):
        return grpc.aio.insecure_channel(
            target, options=options, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=options, interceptors=interceptors
    )
