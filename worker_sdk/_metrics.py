"""Prometheus metrics of the worker, served by ``--metrics-port``."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

TASKS = Counter(
    "gridpod_worker_tasks",
    "Tasks processed, by kernel and outcome (ok, error, invalid).",
    ["kernel", "outcome"],
)
KERNEL_SECONDS = Histogram(
    "gridpod_worker_kernel_duration_seconds",
    "Time spent in kernels, sending their results included.",
    ["kernel"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
)
BYTES_IN = Counter(
    "gridpod_worker_received_bytes",
    "Payload and data dependency bytes received from the agent.",
)
BYTES_OUT = Counter(
    "gridpod_worker_sent_bytes",
    "Result bytes sent to the agent (returned values and send_result calls).",
)
IN_FLIGHT = Gauge("gridpod_worker_tasks_in_flight", "Tasks being processed now.")
INVALID = TASKS.labels(kernel="", outcome="invalid")


@dataclass(frozen=True)
class KernelMetrics:
    ok: Counter
    errors: Counter
    seconds: Histogram


@functools.cache
def for_kernel(kernel: str) -> KernelMetrics:
    """The labelled series of one kernel, looked up once (``labels`` takes a lock)."""
    return KernelMetrics(
        ok=TASKS.labels(kernel=kernel, outcome="ok"),
        errors=TASKS.labels(kernel=kernel, outcome="error"),
        seconds=KERNEL_SECONDS.labels(kernel=kernel),
    )
