"""The kernels of the load test: a short one whose value is derived from its
payload, and one that fills a large result for clients that read it slowly."""

from __future__ import annotations

import hashlib

from worker_sdk import Task, TaskHandler, kernel

_PATTERN = bytes(range(256)) * 4096


def derived(payload: bytes) -> bytes:
    """What ``derive`` answers for ``payload``: its digest, then the payload
    reversed, so that a result given to the wrong task cannot pass for its own."""
    return hashlib.sha256(payload).hexdigest().encode() + b":" + payload[::-1]


class Load(TaskHandler):
    @kernel
    def derive(self, task: Task) -> bytes:
        return derived(bytes(task.payload))

    @kernel
    def fill(self, task: Task) -> bytes:
        """As many bytes as the payload says, in decimal."""
        size = int(bytes(task.payload).decode())
        whole, part = divmod(size, len(_PATTERN))
        return _PATTERN * whole + _PATTERN[:part]
