"""gRPC settings this project's processes run with, unless the environment already
names them: set on import, since gRPC core reads them when ``grpc`` first loads."""

from __future__ import annotations

import os
import sys

__all__ = ["GRPC_DEFAULTS", "apply"]

GRPC_DEFAULTS = {
    # With the EventEngine, each message read or written passes from one of its
    # threads to the completion queue's poller thread, then to the event loop: some
    # 25 context switches per task in each of the agent and the worker. Without it,
    # the poller thread does the socket I/O itself, and on two cores the agent
    # spends a fifth less CPU per task, the worker a quarter less.
    "GRPC_EXPERIMENTS": ",".join(
        (
            "-event_engine_client",
            "-event_engine_listener",
            "-event_engine_for_all_other_endpoints",
        )
    ),
}


def apply() -> None:
    """Set each default the environment lacks, if gRPC is not loaded yet."""
    if "grpc" in sys.modules:
        return  # too late to matter, and the process's own choice
    for name, value in GRPC_DEFAULTS.items():
        os.environ.setdefault(name, value)


apply()
