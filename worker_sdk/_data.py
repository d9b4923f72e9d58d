"""Streamed data held once, large data spilled to disk, and data cut into chunks.

Incoming data arrives as chunks of unknown total size. Small data is appended to one
growing buffer; past a threshold everything moves to an unlinked temporary file that is
memory-mapped once complete, so a 2 GiB data dependency never costs twice its size.
Either way the kernel sees a read-only ``memoryview``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from worker_sdk._model import DataSource

DEFAULT_SPILL_THRESHOLD = 64 * 1024 * 1024
# Used when the agent announces no chunk size; the reference agent's own figure.
DEFAULT_CHUNK_SIZE = 84_000

_EMPTY = memoryview(b"")


class DataSink:
    """Collects the chunks of one payload, dependency or fetched result."""

    def __init__(
        self,
        spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
        spill_dir: str | None = None,
    ) -> None:
        self._threshold = spill_threshold
        self._spill_dir = spill_dir
        self._single: bytes | None = None
        self._buffer: bytearray | None = None
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._file is None and self.size + len(chunk) > self._threshold:
            self._spill()
        self.size += len(chunk)
        if self._file is not None:
            self._file.write(chunk)
        elif self._single is None and self._buffer is None:
            # The common case of one chunk keeps the bytes object protobuf made.
            self._single = chunk
        else:
            if self._buffer is None:
                self._buffer = bytearray(self._single or b"")
                self._single = None
            self._buffer += chunk

    def _spill(self) -> None:
        # Closed by close(); unlinked at once, so nothing is left behind on a crash.
        self._file = tempfile.TemporaryFile(prefix="gridpod-", dir=self._spill_dir)  # noqa: SIM115
        held = self._single if self._single is not None else self._buffer
        if held:
            self._file.write(held)
        self._single = self._buffer = None

    def view(self) -> memoryview:
        """The complete data, read-only. Call once all chunks are written."""
        if self._file is not None:
            self._file.flush()
            if self.size == 0:
                return _EMPTY
            self._map = mmap.mmap(
                self._file.fileno(), self.size, access=mmap.ACCESS_READ
            )
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                # Kernels mostly read data front to back: read ahead, drop behind.
                self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._view = memoryview(self._map)
            return self._view
        if self._buffer is not None:
            return memoryview(self._buffer).toreadonly()
        return memoryview(self._single or b"")

    def close(self) -> None:
        """Release the spill file: a view of spilled data is invalid from then on.

        Slices of it that a kernel kept hold the mapping open until they are freed.
        """
        if self._view is not None:
            with contextlib.suppress(BufferError):
                self._view.release()
            self._view = None
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None


def iter_chunks(source: DataSource, chunk_size: int) -> Iterator[bytes]:
    """Cut ``source`` into chunks of at most ``chunk_size`` bytes, never read whole.

    A ``str`` or path-like source names a file. Zero-length pieces are skipped: an
    empty source yields nothing.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk_size}")
    if isinstance(source, bytes) and len(source) <= chunk_size:
        if source:
            yield source  # protobuf takes bytes only; this one needs no copy
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield from _slices(memoryview(source).cast("B"), chunk_size)
    elif isinstance(source, (str, os.PathLike)):
        yield from _file_chunks(Path(source), chunk_size)
    else:
        for piece in source:
            if not isinstance(piece, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data chunks must be bytes-like, got {type(piece).__name__}"
                )
            yield from _slices(memoryview(piece).cast("B"), chunk_size)


def _slices(view: memoryview, chunk_size: int) -> Iterator[bytes]:
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


def _file_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(chunk_size):
            yield chunk
