"""Each sample, run with its one command: it starts a local grid and checks itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


def test_pi_estimate_is_close() -> None:
    out = _run("samples.pi", "--tasks", "8", "--points", "50000")
    found = re.search(r"pi ~ (\d\.\d+) from 400,000 points in 8 tasks", out)
    assert found, out
    assert abs(float(found.group(1)) - 3.14159) < 0.02


def test_divide_and_conquer_is_exact() -> None:
    out = _run("samples.divide", "--high", "100000", "--leaf", "12500")
    expected = sum(n * n for n in range(100_000))
    assert f"= {expected} (correct)" in out, out
    # 8 leaves: 15 splitting tasks (7 of them split further) and 7 additions.
    assert ", 22 tasks in" in out, out


def test_checksum_of_a_large_payload_matches() -> None:
    out = _run("samples.checksum", "--mib", "512", timeout=300)
    assert "(match)" in out, out
