"""The agent sidecar that feeds tasks to a worker, and the grid's control plane."""

import os

import worker_sdk  # noqa: F401  (sets gRPC's defaults before anything loads it)

# Every process this package forks runs exec at once (workers, agents, commands),
# so gRPC's fork handlers have nothing to protect; left on, they print a line for
# each child started while gRPC threads are busy.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__all__: list[str] = []
