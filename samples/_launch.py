"""Running a sample's client: against a given control plane, or in a local grid.

A sample started with neither ``--address`` nor ``$GRIDPOD_CONTROL_PLANE`` runs
itself again under ``agent local``, with the sample's own worker beside it.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

__all__ = ["control_plane_address", "in_local_grid"]

CONTROL_PLANE_VARIABLE = "GRIDPOD_CONTROL_PLANE"


def control_plane_address(given: str | None) -> str | None:
    """The control plane to use, or None to start a local grid."""
    return given or os.environ.get(CONTROL_PLANE_VARIABLE)


def in_local_grid(module: str, handler: str, argv: Sequence[str], workers: int) -> None:
    """Replace this process with ``agent local`` running ``module`` as its client
    and ``python -m worker_sdk handler`` as its workers."""
    client = shlex.join([sys.executable, "-m", module, *argv])
    command = [
        sys.executable,
        *("-m", "agent", "local"),
        *("--workers", str(workers)),
        *("--listen", "127.0.0.1:0"),
        *("--run", client),
        "--",
        *(sys.executable, "-m", "worker_sdk", handler),
    ]
    os.execv(sys.executable, command)
