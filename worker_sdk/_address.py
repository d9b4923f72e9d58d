"""Addresses of the worker and agent channels: unix sockets or TCP endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_AGENT_ADDRESS", "DEFAULT_WORKER_ADDRESS", "Address"]

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
