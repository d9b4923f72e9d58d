"""Task handlers that ``bench/worker.py`` serves with ``python -m worker_sdk``.

Their kernels do next to nothing, so that what is timed is the SDK around them.
"""

from __future__ import annotations

import zlib

from worker_sdk import Task, TaskHandler, kernel


class Empty(TaskHandler):
    """An ``async`` kernel, run on the worker's event loop."""

    @kernel
    async def empty(self, task: Task) -> bytes:
        return b"ok"


class EmptySync(TaskHandler):
    """A plain kernel, run on one of the worker's kernel threads."""

    @kernel
    def empty(self, task: Task) -> bytes:
        return b"ok"


class Checksum(TaskHandler):
    """Returns the payload's CRC32 as 8 hex digits, reading the payload once."""

    @kernel
    async def crc32(self, task: Task) -> bytes:
        return b"%08x" % zlib.crc32(task.payload)
