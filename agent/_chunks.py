"""Small helpers for streams of chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

__all__ = ["chained", "single"]


async def chained(
    first: Iterable[bytes], rest: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The chunks already taken from a stream, then the rest of it."""
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


async def single(data: bytes) -> AsyncIterator[bytes]:
    """One chunk as a stream."""
    yield data
