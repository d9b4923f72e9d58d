"""Wake-ups between the processes of one host over a directory of unix datagram
sockets: each listener binds one socket, named after the topics it listens to."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["Listener", "Notifier", "notify_directory"]

logger = logging.getLogger(__name__)

# sun_path holds 104 bytes on macOS and 108 on Linux, its terminating NUL included.
_MAX_SOCKET_PATH = 100
_TOKEN_BYTES = 4
# A socket is named "{mask}.{pid}.{token}"; pids stay below 2**22 (Linux's pid_max).
_LONGEST_NAME = len("255.4194304.") + 2 * _TOKEN_BYTES
# A listing is trusted while the directory's mtime is unchanged, but a socket bound in
# the same timestamp tick as the last change leaves the mtime as it was: a listing
# taken that soon after a change is redone on the next publish. File systems with
# coarser timestamps (one second on HFS+) rely on the periodic listing instead.
_SETTLED_NS = 50_000_000
_RELIST_AFTER = 1.0


@dataclass(frozen=True)
class _Target:
    mask: int
    path: str


class Listener:
    """The wake-ups reaching one socket, coalesced; made by ``Notifier.listen``.

    Use it on the event loop that made it, also to close it.
    """

    def __init__(
        self,
        sock: socket.socket,
        path: str,
        loop: asyncio.AbstractEventLoop,
        on_close: Callable[[Listener], None],
    ) -> None:
        self._socket = sock
        self._path = path
        self._loop = loop
        self._on_close = on_close
        self._changed = asyncio.Event()
        self._closed = False
        loop.add_reader(sock.fileno(), self._drain)

    @property
    def path(self) -> str:
        """The socket file publishers send to."""
        return self._path

    async def wait(self, timeout: float | None = None) -> bool:
        """Whether a wake-up came since the previous wait, waiting up to ``timeout``
        seconds (forever if None) for one."""
        if self._closed:
            raise RuntimeError(f"the listener on {self._path} is closed: listen again")
        # Wake-ups already queued count even before the loop has seen them.
        self._drain()
        if not self._changed.is_set():
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        self._changed.clear()
        return True

    def close(self) -> None:
        """Stop listening and remove the socket file; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)
        # A pending wait returns rather than hang until its timeout.
        self._changed.set()
        self._on_close(self)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _drain(self) -> None:
        received = False
        while True:
            try:
                self._socket.recv(64)
            except OSError:  # BlockingIOError once the queue is empty
                break
            received = True
        if received:
            self._changed.set()


class Notifier:
    """Wake-ups between the processes that share one directory.

    ``publish`` may be called from any thread; ``listen`` and ``close`` from the
    running event loop's thread.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._targets: list[_Target] = []
        self._listed_mtime: int | None = None
        self._listed_at = 0.0
        self._listeners: set[Listener] = set()
        self._closed = False

    def publish(self, topics: int) -> None:
        """Wake every listener whose topics intersect ``topics``; never blocks."""
        _check_topics(topics)
        with self._lock:
            if self._closed:
                return
            for target in self._current_targets():
                if target.mask & topics:
                    self._send(target, topics)

    def listen(self, topics: int) -> Listener:
        """A new listener for ``topics``, on the running event loop."""
        _check_topics(topics)
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError(f"the notifier of {self._directory} is closed")
        _make_private_directory(self._directory)
        token = secrets.token_hex(_TOKEN_BYTES)
        path = str(self._directory / f"{topics}.{os.getpid()}.{token}")
        listener = Listener(_bind(path), path, loop, self._listeners.discard)
        self._listeners.add(listener)
        with self._lock:
            self._listed_mtime = None  # this process's next publish must reach it
        return listener

    def close(self) -> None:
        """Close the listeners made here and the publishing socket; idempotent."""
        for listener in list(self._listeners):
            listener.close()
        with self._lock:
            self._closed = True
            if self._sender is not None:
                self._sender.close()
                self._sender = None

    def _current_targets(self) -> list[_Target]:
        try:
            mtime = os.stat(self._directory).st_mtime_ns
        except OSError:
            return []  # nobody has listened here yet
        now = time.monotonic()
        if mtime != self._listed_mtime or now - self._listed_at > _RELIST_AFTER:
            self._targets = _list_targets(self._directory)
            settled = time.time_ns() - mtime > _SETTLED_NS
            self._listed_mtime = mtime if settled else None
            self._listed_at = now
        return self._targets

    def _send(self, target: _Target, topics: int) -> None:
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        try:
            self._sender.sendto(bytes((topics,)), target.path)
        except BlockingIOError:
            pass  # its queue is full: it has wake-ups pending already
        except (ConnectionRefusedError, FileNotFoundError):
            self._drop_stale(target)
        except OSError as err:
            if err.errno != errno.ENOBUFS:  # macOS's word for a full queue
                logger.debug("cannot wake the listener on %s: %s", target.path, err)

    def _drop_stale(self, target: _Target) -> None:
        # Its process died without closing it: nobody will ever read it again.
        with contextlib.suppress(OSError):
            os.unlink(target.path)
        self._targets = [kept for kept in self._targets if kept != target]
        logger.debug("removed the stale wake-up socket %s", target.path)


def notify_directory(database: Path) -> Path:
    """The directory of wake-up sockets for the SQLite file ``database``.

    Beside the file, so that whatever shares the file shares the directory, unless
    socket paths there would be too long; then a directory under the temporary
    directory named after the file's path, which the processes must agree on.
    """
    resolved = Path(database).resolve()
    beside = resolved.with_name(f"{resolved.name}.notify")
    if len(os.fsencode(beside)) + 1 + _LONGEST_NAME <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
    return Path(tempfile.gettempdir(), f"gridpod-notify-{os.getuid()}-{digest}")


def _check_topics(topics: int) -> None:
    if not 0 < topics < 256:
        raise ValueError(f"topics must be a bit mask from 1 to 255, not {topics}")


def _make_private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Another user owning it could remove or replace the sockets in it.
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(
            f"{directory} must be a directory owned by this user to hold wake-up "
            "sockets: remove it and try again"
        )


def _bind(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(path)
        # chmod rather than a umask: the umask is process-wide and other threads
        # may be creating files; the private directory covers the moment between.
        os.chmod(path, 0o600)
    except OSError:
        sock.close()
        raise
    return sock


def _list_targets(directory: Path) -> list[_Target]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    targets = []
    for name in names:
        mask = name.partition(".")[0]
        if mask.isdecimal():
            targets.append(_Target(int(mask), os.path.join(directory, name)))
    return targets
