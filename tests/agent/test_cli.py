"""The ``agent`` command line: resources, and refusing bad arguments clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.agent.conftest import ROOT, Grid, options


def agent(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_resources_put_ls_get_rm(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}"
    source = tmp_path / "model.bin"
    source.write_bytes(b"\x00weights!\xff" * 100_000)
    put = agent("resources", "put", "--backend", url, "model", str(source))
    assert put.returncode == 0, put.stderr
    assert put.stdout.decode().strip() == "model: 1000000 bytes"
    assert (
        agent("resources", "put", "--backend", url, "tiny", "-", stdin=b"t").returncode
        == 0
    )
    listing = agent("resources", "ls", "--backend", url).stdout.decode().splitlines()
    assert listing == ["1000000\tmodel", "1\ttiny"]
    copy = tmp_path / "copy.bin"
    got = agent("resources", "get", "--backend", url, "model", str(copy))
    assert got.returncode == 0, got.stderr
    assert copy.read_bytes() == source.read_bytes()
    assert agent("resources", "get", "--backend", url, "tiny").stdout == b"t"
    assert agent("resources", "rm", "--backend", url, "model").returncode == 0
    missing = agent("resources", "get", "--backend", url, "model", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert b"model" in missing.stderr
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "x.partial").exists()


def test_an_unknown_backend_scheme_is_named() -> None:
    done = agent("run", "--backend", "mongodb://localhost/grid")
    assert done.returncode == 2
    assert b"mongodb" in done.stderr


def test_a_negative_busy_poll_is_refused() -> None:
    done = agent("run", "--backend", "sqlite://unused.db", "--busy-poll", "-1")
    assert done.returncode == 2
    assert b"--busy-poll" in done.stderr


def test_a_bad_worker_address_is_named() -> None:
    done = agent("run", "--backend", "sqlite:///tmp/unused.db", "--worker", "nowhere")
    assert done.returncode == 2
    assert b"'nowhere' is not an address" in done.stderr


async def test_a_kernel_reads_a_resource_put_from_the_command_line(grid: Grid) -> None:
    put = agent(
        "resources", "put", "--backend", grid.backend_url, "table", "-", stdin=b"42"
    )
    assert put.returncode == 0, put.stderr
    grid.pod()
    session = await grid.session()
    await grid.submit(session, b"table", ["out"], options("resource"))
    assert await grid.value(session, "out") == b"42"
