"""Blobs: written from chunks as they come, read back lazily, in bounded memory."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.backend import Backend, NewTask, NotFound
from gridpod_api import objects_pb2
from tests.backend.support import chunks, read

CHUNK = 256 * 1024
TOTAL = 64 * 1024 * 1024
MEMORY_BOUND = 8 * 1024 * 1024


def _pieces() -> Iterator[bytes]:
    # A fresh object per chunk, so that a writer keeping chunks would show.
    for i in range(TOTAL // CHUNK):
        yield bytes([i % 251]) * CHUNK


async def _generated() -> AsyncIterator[bytes]:
    for piece in _pieces():
        yield piece


async def test_an_empty_blob_has_no_chunks(backend: Backend) -> None:
    ref = await backend.write_blob(chunks())
    assert ref.size == 0
    assert [c async for c in backend.read_blob(ref.blob_id)] == []


async def test_chunks_read_back_as_written(backend: Backend) -> None:
    parts = [b"first", b"", b"x" * 70_000, b"last"]
    ref = await backend.write_blob(chunks(*parts))
    assert ref.size == sum(map(len, parts))
    assert [c async for c in backend.read_blob(ref.blob_id)] == parts


async def test_many_chunks_cross_every_batch(backend: Backend) -> None:
    parts = [i.to_bytes(2, "big") * 3000 for i in range(1000)]
    ref = await backend.write_blob(chunks(*parts))
    assert [c async for c in backend.read_blob(ref.blob_id)] == parts


async def test_each_blob_gets_its_own_id(backend: Backend) -> None:
    first = await backend.write_blob(chunks(b"same"))
    second = await backend.write_blob(chunks(b"same"))
    assert first.blob_id != second.blob_id
    assert await read(backend.read_blob(second.blob_id)) == b"same"


async def test_an_unknown_blob_raises_when_iterated(backend: Backend) -> None:
    stream = backend.read_blob("no-such-blob")
    with pytest.raises(NotFound):
        await read(stream)


async def test_a_failing_chunk_source_raises_its_own_error(
    backend: Backend,
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * CHUNK
        raise OSError("the client went away")

    with pytest.raises(OSError, match="went away"):
        await backend.write_blob(broken())
    ref = await backend.write_blob(chunks(b"after"))
    assert await read(backend.read_blob(ref.blob_id)) == b"after"


async def test_64_mib_round_trips_in_bounded_memory(backend: Backend) -> None:
    expected = hashlib.sha256()
    for piece in _pieces():
        expected.update(piece)

    tracemalloc.start()
    try:
        ref = await backend.write_blob(_generated())
        write_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        digest, size = hashlib.sha256(), 0
        async for chunk in backend.read_blob(ref.blob_id):
            digest.update(chunk)
            size += len(chunk)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert ref.size == TOTAL
    assert size == TOTAL
    assert digest.digest() == expected.digest()
    assert write_peak < MEMORY_BOUND, f"writing peaked at {write_peak} bytes"
    assert read_peak < MEMORY_BOUND, f"reading peaked at {read_peak} bytes"


async def test_discarding_deletes_only_blobs_nothing_references(
    backend: Backend,
) -> None:
    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    session = await backend.create_session(objects_pb2.TaskOptions(), [""])
    used = await backend.write_blob(one(b"a task's payload"))
    unused = await backend.write_blob(one(b"a refused task's payload"))
    await backend.submit_tasks(
        session.session_id, [NewTask(payload=used, expected_outputs=["out"])]
    )
    await backend.discard_blobs([used.blob_id, unused.blob_id, "no-such-blob"])
    assert [chunk async for chunk in backend.read_blob(used.blob_id)] == [
        b"a task's payload"
    ]
    with pytest.raises(NotFound):
        async for _ in backend.read_blob(unused.blob_id):
            pass
    await backend.discard_blobs([])
