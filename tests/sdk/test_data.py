"""Holding incoming data, spilling it to disk, and cutting outgoing data into chunks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker_sdk._data import DataSink, iter_chunks


def test_a_single_chunk_is_kept_without_a_copy() -> None:
    chunk = b"x" * 1000
    sink = DataSink(spill_threshold=10_000)
    sink.write(chunk)
    view = sink.view()
    assert view.obj is chunk
    assert view.readonly


def test_chunks_are_joined_in_one_buffer() -> None:
    sink = DataSink(spill_threshold=10_000)
    for piece in (b"ab", b"", b"cd", b"e"):
        sink.write(piece)
    view = sink.view()
    assert bytes(view) == b"abcde"
    assert view.readonly
    assert sink.size == 5


def test_data_past_the_threshold_spills_to_an_unlinked_file(tmp_path: Path) -> None:
    sink = DataSink(spill_threshold=8, spill_dir=str(tmp_path))
    sink.write(b"12345")
    sink.write(b"67890")
    sink.write(b"abc")
    view = sink.view()
    assert bytes(view) == b"1234567890abc"
    # The temporary file has no name: nothing is left behind if the worker dies.
    assert os.listdir(tmp_path) == []
    assert type(view.obj).__name__ == "mmap"
    sink.close()
    with pytest.raises(ValueError):
        bytes(view)  # released with the task


def test_an_empty_spill_is_an_empty_view(tmp_path: Path) -> None:
    sink = DataSink(spill_threshold=0, spill_dir=str(tmp_path))
    sink.write(b"")
    assert bytes(sink.view()) == b""
    sink.close()


def test_a_slice_kept_by_a_kernel_survives_close(tmp_path: Path) -> None:
    sink = DataSink(spill_threshold=1, spill_dir=str(tmp_path))
    sink.write(b"hello world")
    kept = sink.view()[6:]
    sink.close()
    assert bytes(kept) == b"world"


def test_bytes_are_cut_at_the_chunk_size() -> None:
    chunks = list(iter_chunks(b"abcdefghij", 4))
    assert chunks == [b"abcd", b"efgh", b"ij"]
    assert all(isinstance(c, bytes) for c in chunks)
    small = b"abc"
    assert next(iter_chunks(small, 4)) is small


def test_empty_data_yields_no_chunk() -> None:
    assert list(iter_chunks(b"", 4)) == []
    assert list(iter_chunks([], 4)) == []


def test_a_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "result.bin"
    path.write_bytes(b"0123456789")
    assert list(iter_chunks(path, 3)) == [b"012", b"345", b"678", b"9"]
    assert b"".join(iter_chunks(str(path), 100)) == b"0123456789"


def test_an_iterable_of_chunks_is_recut() -> None:
    pieces: list[bytes | bytearray | memoryview] = [
        b"abcdef",
        bytearray(b"gh"),
        memoryview(b"ijklm"),
    ]
    assert list(iter_chunks(pieces, 4)) == [b"abcd", b"ef", b"gh", b"ijkl", b"m"]


def test_a_chunk_that_is_not_bytes_is_named() -> None:
    with pytest.raises(TypeError, match="must be bytes-like, got int"):
        list(iter_chunks([b"ok", 3], 4))  # type: ignore[list-item]


def test_a_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        list(iter_chunks(b"x", 0))
