"""Starting a grpc.aio server on an address, with owner-only unix sockets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import grpc

from worker_sdk._address import Address
from worker_sdk._errors import WorkerSdkError

__all__ = ["listen", "prepare_socket_path"]


async def listen(server: grpc.aio.Server, address: Address) -> int:
    """Bind ``server`` to ``address`` and start it; returns the bound TCP port."""
    if address.kind == "unix":
        prepare_socket_path(address.target)
    # Owner-only from the moment the socket file exists: no window with wider modes.
    previous_umask = os.umask(0o077)
    try:
        port = server.add_insecure_port(address.grpc_target)
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
