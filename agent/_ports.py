"""Free TCP ports to hand to a process that binds them later: picked below the
kernel's ephemeral range, where no outgoing connection can take one meanwhile."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
_ATTEMPTS = 200
# A port handed out is not handed out again by this process: the one it went to
# may not have bound it yet.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing on ``host`` listens on, not handed out before by this process.

    A port from ``bind(("", 0))`` comes from the ephemeral range, which the kernel
    also draws from for every outgoing connection: between the probe and the
    caller's own bind, a client elsewhere on the machine can take it.
    """
    ephemeral_start = _ephemeral_start()
    if ephemeral_start - _LOWEST >= _ATTEMPTS:
        for _ in range(_ATTEMPTS):
            port = random.randrange(_LOWEST, ephemeral_start)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
    # An unusual range, or everything below it in use: let the kernel choose.
    while True:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _LOWEST


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
