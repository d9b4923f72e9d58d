"""Wake-ups over a directory of unix datagram sockets, across notifiers, threads and
processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backend import _notify
from agent.backend._notify import Notifier, notify_directory

QUEUE = 1
STATE = 2
REPOSITORY = Path(__file__).resolve().parents[2]

# Listens to QUEUE, then wakes the parent on STATE and reports what it saw.
CHILD = """
import asyncio, sys
from agent.backend._notify import Notifier

async def main():
    notifier = Notifier(sys.argv[1])
    with notifier.listen(1) as listener:
        print("ready", flush=True)
        woken = await listener.wait(10)
    notifier.publish(2)
    notifier.close()
    print("woken" if woken else "timed out", flush=True)

asyncio.run(main())
"""


@pytest.fixture
def directory() -> Iterator[Path]:
    """A directory to listen in, not created yet, with a short path: pytest's own
    temporary paths can exceed what a unix socket path may hold."""
    parent = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
    yield parent / "n"
    shutil.rmtree(parent)


@pytest.fixture
def notifier(directory: Path) -> Iterator[Notifier]:
    opened = Notifier(directory)
    yield opened
    opened.close()


async def test_publish_wakes_a_listener_of_the_same_notifier(
    notifier: Notifier,
) -> None:
    with notifier.listen(QUEUE) as listener:
        assert not await listener.wait(0.01)
        notifier.publish(QUEUE)
        assert await listener.wait(1)


async def test_publish_wakes_a_listener_of_another_notifier(
    notifier: Notifier, directory: Path
) -> None:
    publisher = Notifier(directory)
    try:
        with notifier.listen(STATE) as listener:
            publisher.publish(STATE)
            assert await listener.wait(1)
    finally:
        publisher.close()


async def test_wake_ups_cross_processes(notifier: Notifier, directory: Path) -> None:
    with notifier.listen(STATE) as listener:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(directory),
            cwd=REPOSITORY,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"ready\n"
        notifier.publish(QUEUE)
        assert await listener.wait(10)
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"woken\n"
        assert await child.wait() == 0


async def test_a_listener_hears_only_its_topics(notifier: Notifier) -> None:
    with notifier.listen(QUEUE) as listener:
        notifier.publish(STATE)
        assert not await listener.wait(0.05)
        notifier.publish(QUEUE | STATE)
        assert await listener.wait(1)


async def test_wake_ups_coalesce(notifier: Notifier) -> None:
    with notifier.listen(QUEUE) as listener:
        for _ in range(100):
            notifier.publish(QUEUE)
        assert await listener.wait(0)
        assert not await listener.wait(0.05)


async def test_a_wake_up_before_the_wait_is_kept(notifier: Notifier) -> None:
    with notifier.listen(QUEUE) as listener:
        notifier.publish(QUEUE)
        assert await listener.wait(0)
        notifier.publish(QUEUE)
        await asyncio.sleep(0.02)  # the loop sees it readable before the wait
        assert await listener.wait(0)


def _set_mtime(directory: Path, mtime_ns: int) -> None:
    """Give ``directory`` the mtime it had, as a file system with coarse timestamps
    does for a change within the same tick."""
    os.utime(directory, ns=(directory.stat().st_atime_ns, mtime_ns))


async def test_a_listener_bound_in_the_tick_of_a_listing_hears_the_next_publish(
    notifier: Notifier, directory: Path
) -> None:
    publisher = Notifier(directory)
    try:
        with notifier.listen(QUEUE) as first:
            listed_mtime = directory.stat().st_mtime_ns
            publisher.publish(QUEUE)
            assert await first.wait(1)
            with notifier.listen(QUEUE) as second:
                _set_mtime(directory, listed_mtime)
                publisher.publish(QUEUE)
                assert await second.wait(0.05)
    finally:
        publisher.close()


async def test_publish_reaches_a_listener_of_its_own_notifier_at_once(
    notifier: Notifier, directory: Path
) -> None:
    with notifier.listen(QUEUE) as first:
        old_mtime = directory.stat().st_mtime_ns - 10**10
        _set_mtime(directory, old_mtime)
        notifier.publish(QUEUE)
        assert await first.wait(1)
        with notifier.listen(QUEUE) as second:
            _set_mtime(directory, old_mtime)
            notifier.publish(QUEUE)
            assert await second.wait(0.05)


async def test_an_old_listing_is_redone_though_the_mtime_is_unchanged(
    notifier: Notifier, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_notify, "_RELIST_AFTER", 0.2)
    publisher = Notifier(directory)
    try:
        with notifier.listen(QUEUE) as first:
            old_mtime = directory.stat().st_mtime_ns - 10**10
            _set_mtime(directory, old_mtime)
            publisher.publish(QUEUE)
            assert await first.wait(1)
            with notifier.listen(QUEUE) as second:
                _set_mtime(directory, old_mtime)
                publisher.publish(QUEUE)
                assert not await second.wait(0.01)
                await asyncio.sleep(0.2)
                publisher.publish(QUEUE)
                assert await second.wait(0.05)
    finally:
        publisher.close()


async def test_publish_removes_the_socket_of_a_dead_listener(
    notifier: Notifier, directory: Path
) -> None:
    with notifier.listen(QUEUE) as listener:
        stale = directory / "1.4000000.deadbeef"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(str(stale))
        dead.close()
        assert stale.exists()
        notifier.publish(QUEUE)
        assert not stale.exists()
        assert await listener.wait(1)


def test_publish_without_listeners_changes_nothing(directory: Path) -> None:
    notifier = Notifier(directory)
    notifier.publish(QUEUE)
    assert not directory.exists()
    directory.mkdir()
    notifier.publish(QUEUE | STATE)
    assert list(directory.iterdir()) == []
    notifier.close()


async def test_sockets_and_their_directory_are_owner_only(
    notifier: Notifier, directory: Path
) -> None:
    with notifier.listen(QUEUE) as listener:
        mode = Path(listener.path).stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert mode & 0o077 == 0
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_closing_removes_the_socket_files(notifier: Notifier) -> None:
    listener = notifier.listen(QUEUE)
    kept = notifier.listen(STATE)
    assert Path(listener.path).exists()
    listener.close()
    listener.close()
    assert not Path(listener.path).exists()
    notifier.close()
    notifier.close()
    assert not Path(kept.path).exists()


async def test_closing_releases_a_pending_wait(notifier: Notifier) -> None:
    listener = notifier.listen(QUEUE)
    waiting = asyncio.create_task(listener.wait(10))
    await asyncio.sleep(0.01)
    listener.close()
    assert await asyncio.wait_for(waiting, 1)
    with pytest.raises(RuntimeError, match="closed"):
        await listener.wait(0)


async def test_publish_from_another_thread(notifier: Notifier) -> None:
    with notifier.listen(STATE) as listener:
        await asyncio.to_thread(notifier.publish, STATE)
        assert await listener.wait(1)


@pytest.mark.parametrize("topics", [0, 256, -1])
async def test_topics_outside_a_byte_are_refused(
    notifier: Notifier, topics: int
) -> None:
    with pytest.raises(ValueError, match="bit mask"):
        notifier.publish(topics)
    with pytest.raises(ValueError, match="bit mask"):
        notifier.listen(topics)


def test_notify_directory_is_beside_a_short_database_path(directory: Path) -> None:
    database = directory.parent / "state.db"
    assert notify_directory(database) == database.resolve().parent / "state.db.notify"


def test_notify_directory_of_a_long_database_path_is_temporary() -> None:
    database = Path("/tmp", "x" * 120, "state.db")
    chosen = notify_directory(database)
    assert chosen.parent == Path(tempfile.gettempdir())
    prefix, _, digest = chosen.name.rpartition("-")
    assert prefix == f"gridpod-notify-{os.getuid()}"
    assert len(digest) == 16
    assert set(digest) <= set("0123456789abcdef")
    assert notify_directory(database) == chosen
    assert notify_directory(database.with_name("other.db")) != chosen
