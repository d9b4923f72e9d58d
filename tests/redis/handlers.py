"""Kernels for grids of several pods: the agent tests' own, and two more."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.agent.handlers import Grid
from worker_sdk import Task, kernel


class Fleet(Grid):
    @kernel
    async def nap(self, task: Task) -> bytes:
        """Sleeps the seconds before the payload's colon, then answers the label
        after it: each task's value is its own, to be checked."""
        seconds, _, label = bytes(task.payload).decode().partition(":")
        await asyncio.sleep(float(seconds))
        return f"{label} done".encode()

    @kernel
    async def hold(self, task: Task) -> bytes:
        """The first attempt writes its communication token to the marker file
        that the payload names, then holds the task for a minute (to be killed);
        any later attempt answers at once."""
        marker = Path(bytes(task.payload).decode())
        if not marker.exists():
            # Renamed into place: the test reads a whole token or none.
            partial = marker.with_suffix(".partial")
            partial.write_text(task._token)
            partial.rename(marker)
            await asyncio.sleep(60)
        return b"held"
