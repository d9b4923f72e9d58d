"""The benchmarks still run: a quick pass that checks they print their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "rss_row"),
    [("bench/worker.py", "peak RSS (VmHWM)"), ("bench/agent.py", "agent peak RSS")],
)
def test_a_quick_run_prints_its_figures(script: str, rss_row: str) -> None:
    done = subprocess.run(
        [sys.executable, script, "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "empty tasks" in done.stdout
    assert "ratio to floor" in done.stdout
    assert rss_row in done.stdout


def test_a_quick_end_to_end_run_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/end_to_end.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tasks/s" in done.stdout
    assert "submit to result" in done.stdout
    assert "results/s, 16 streams in flight" in done.stdout
    # Without Celery or redis-server, our figures come alone, with a note.
    assert (
        "ratio to celery" in done.stdout
        or "the Celery baseline could not run" in done.stdout
    )


def test_a_quick_scale_run_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/scale.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded, 1" in done.stdout
    assert "redis, 2" in done.stdout
    assert "redis 1 pod / embedded" in done.stdout
