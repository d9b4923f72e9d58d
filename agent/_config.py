"""Configuration of one agent sidecar."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from worker_sdk import Address
from worker_sdk._address import (
    DEFAULT_AGENT_ADDRESS,
    DEFAULT_WORKER_ADDRESS,
    ChannelTls,
    ServerTls,
)

__all__ = ["DEFAULT_BUSY_POLL", "AgentConfig"]

# See agent/_busy_poll.py.
DEFAULT_BUSY_POLL = timedelta(milliseconds=1)


def _default_agent_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """How an agent reaches its backend and worker, and how it paces tasks."""

    backend_url: str
    worker_address: Address = field(
        default_factory=lambda: Address.parse(DEFAULT_WORKER_ADDRESS)
    )
    # Where the Agent service listens for the worker's calls.
    listen_address: Address = field(
        default_factory=lambda: Address.parse(DEFAULT_AGENT_ADDRESS)
    )
    # TLS of the Agent service, and what the channel to the worker trusts; used on
    # TCP only (unix sockets stay plaintext). None: plaintext.
    tls: ServerTls | None = None
    worker_tls: ChannelTls | None = None
    partition_id: str = ""
    # Tasks run at once on the worker; 1 because many kernels are not reentrant.
    concurrency: int = 1
    health_port: int | None = None
    agent_id: str = field(default_factory=_default_agent_id)
    # A task is taken back from an agent that stops renewing for this long.
    lease: timedelta = timedelta(seconds=30)
    # An idle agent wakes when a task is queued; it also polls this often in case
    # a wake-up was missed.
    idle_poll: timedelta = timedelta(milliseconds=500)
    # On SIGTERM, running tasks get this long to finish before they are released.
    grace_period: timedelta = timedelta(seconds=30)
    # Chunk size of payloads and data sent to the worker, and announced to it.
    data_chunk_max_size: int = 1024 * 1024
    # Payloads up to this size are read ahead while the previous task computes.
    prefetch_max_size: int = 4 * 1024 * 1024
    # Backoff between worker health checks while the worker is down.
    health_backoff_initial: timedelta = timedelta(milliseconds=100)
    health_backoff_max: timedelta = timedelta(seconds=5)
    # After each hand-off with the worker, the event loop polls this long rather
    # than sleep (see agent/_busy_poll.py); zero lets it sleep at once.
    busy_poll: timedelta = DEFAULT_BUSY_POLL

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.lease <= timedelta(0):
            raise ValueError(f"the lease must be positive, not {self.lease}")
        if self.data_chunk_max_size < 1:
            raise ValueError(
                f"data_chunk_max_size must be positive, not {self.data_chunk_max_size}"
            )
        if self.busy_poll < timedelta(0):
            raise ValueError(f"busy_poll must not be negative: {self.busy_poll}")
        if self.grace_period < timedelta(0):
            raise ValueError(
                f"the grace period must not be negative: {self.grace_period}"
            )
