"""Busy polling: the event loop keeps polling, instead of sleeping, for a short
window after each hand-off between the agent and its worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

__all__ = ["BusyPoll"]


class BusyPoll:
    """Keeps the event loop awake for ``window`` after each ``touch``.

    A loop asleep in epoll is woken by gRPC's poller thread writing to a socket,
    and in a virtual machine each such wake-up costs tens of microseconds, paid
    again at every message of a task. Right after a hand-off (a request written,
    a call of the worker's answered) the next message is due within a fraction
    of a millisecond: a loop that polls until then takes it without being woken.
    A kernel that computes longer than the window lets the loop sleep again.
    """

    def __init__(self, window: timedelta) -> None:
        self._window = window.total_seconds()
        self._until = 0.0
        self._touched = asyncio.Event()
        # Whether the loop is being kept awake now.
        self.spinning = False

    def touch(self) -> None:
        """A hand-off just happened: poll for the next window."""
        if self._window <= 0:
            return
        self._until = time.monotonic() + self._window
        if not self._touched.is_set():
            self._touched.set()

    @contextmanager
    def hand_off(self) -> Iterator[None]:
        """Touch as a call of the worker's arrives and again as it ends."""
        self.touch()
        try:
            yield
        finally:
            self.touch()

    async def run(self) -> None:
        """Poll after each touch until its window is over; runs until cancelled."""
        if self._window <= 0:
            return
        try:
            while True:
                if time.monotonic() >= self._until:
                    self.spinning = False
                    self._touched.clear()
                    await self._touched.wait()
                    continue
                self.spinning = True
                # Each turn lets the loop run what is ready, then poll its sockets
                # with no timeout.
                await asyncio.sleep(0)
        finally:
            self.spinning = False
