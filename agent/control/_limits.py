"""The control plane's limits on what one client may make it store or hold.

Each is refused with RESOURCE_EXHAUSTED, naming the limit and its value, before
anything of the request is kept.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NoReturn

import grpc

from agent.control._config import ControlPlaneConfig
from agent.control._status import RequestRefused

__all__ = [
    "OpenStreams",
    "bounded_payload",
    "check_payload_size",
    "check_task_count",
    "check_task_keys",
    "exhausted",
]


def exhausted(details: str) -> NoReturn:
    raise RequestRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, details)


def check_task_count(config: ControlPlaneConfig, count: int) -> None:
    """Refuse a request past ``max_tasks_per_request`` tasks."""
    if count > config.max_tasks_per_request:
        exhausted(
            f"the request holds more than max_tasks_per_request "
            f"({config.max_tasks_per_request}) tasks"
        )


def check_task_keys(
    config: ControlPlaneConfig,
    index: int,
    expected_outputs: Sequence[str],
    data_dependencies: Sequence[str],
) -> None:
    """Refuse task ``index`` (from 0) past its limits on keys."""
    if len(expected_outputs) > config.max_expected_outputs:
        exhausted(
            f"task {index} has {len(expected_outputs)} expected outputs, more than "
            f"max_expected_outputs ({config.max_expected_outputs})"
        )
    if len(data_dependencies) > config.max_data_dependencies:
        exhausted(
            f"task {index} has {len(data_dependencies)} data dependencies, more "
            f"than max_data_dependencies ({config.max_data_dependencies})"
        )


def check_payload_size(config: ControlPlaneConfig, index: int, size: int) -> None:
    if size > config.max_payload_size:
        exhausted(
            f"the payload of task {index} is larger than max_payload_size "
            f"({config.max_payload_size} bytes)"
        )


async def bounded_payload(
    config: ControlPlaneConfig, index: int, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The payload chunks of task ``index``, refused once past max_payload_size:
    the blob being written from them is then dropped."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        check_payload_size(config, index, size)
        yield chunk


def _client(peer: str) -> str:
    """The client's address without its port: its connections share one count."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{address.rpartition(':')[0]}"
    return peer


class OpenStreams:
    """The streams each client has open, refused past max_streams_per_client."""

    def __init__(self, config: ControlPlaneConfig) -> None:
        self._limit = config.max_streams_per_client
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def held(self, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
        """Count one stream of the caller while the block runs."""
        client = _client(context.peer())
        if self._open[client] >= self._limit:
            exhausted(
                f"client {client} already has {self._open[client]} streams open: "
                f"max_streams_per_client is {self._limit}"
            )
        self._open[client] += 1
        try:
            yield
        finally:
            self._open[client] -= 1
            if not self._open[client]:
                del self._open[client]
