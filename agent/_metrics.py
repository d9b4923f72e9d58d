"""Prometheus metrics of the agent, served on its health port at ``/metrics``."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)

TRANSITIONS = Counter(
    "gridpod_agent_task_transitions",
    "Task transitions made by this agent, by the status reached.",
    ["status"],
)
TASK_SECONDS = Histogram(
    "gridpod_agent_task_duration_seconds",
    "From acquiring a task to its final transition.",
    buckets=_SECONDS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "gridpod_agent_queue_wait_seconds",
    "From a task's submission to its acquisition by this agent.",
    buckets=_SECONDS,
)
BYTES_TO_WORKER = Counter(
    "gridpod_agent_bytes_to_worker", "Payload and dependency bytes sent to the worker."
)
BYTES_FROM_WORKER = Counter(
    "gridpod_agent_bytes_from_worker",
    "Result and subtask payload bytes received from the worker.",
)
RETRIES = Counter("gridpod_agent_retries", "Failed attempts that were retried.")
WORKER_UP = Gauge(
    "gridpod_agent_worker_up", "1 while the worker answers health checks."
)
RUNNING = Gauge("gridpod_agent_tasks_running", "Tasks running on the worker now.")


@functools.cache
def transitions(status: str) -> Counter:
    """The transition counter of one status, looked up once (``labels`` locks)."""
    return TRANSITIONS.labels(status=status)
