"""The worker side: ``python -m worker_sdk samples.checksum.kernels:Checksum``."""

from __future__ import annotations

import hashlib

from worker_sdk import Task, TaskHandler, kernel

__all__ = ["Checksum"]

# Hashed a slice at a time, so that a payload spilled to a mapped file is paged in
# and dropped gradually rather than touched whole at once.
_SLICE = 8 * 1024 * 1024


class Checksum(TaskHandler):
    @kernel
    def sha256(self, task: Task) -> bytes:
        digest = hashlib.sha256()
        payload = task.payload
        for start in range(0, len(payload), _SLICE):
            digest.update(payload[start : start + _SLICE])
        return f"{digest.hexdigest()} {len(payload)}".encode()
