"""The benchmarks still run: a quick pass that checks they print their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_run(script: str) -> str:
    """What ``script --quick`` printed, once it exited 0."""
    done = subprocess.run(
        [sys.executable, script, "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("script", "rss_row"),
    [("bench/worker.py", "peak RSS (VmHWM)"), ("bench/agent.py", "agent peak RSS")],
)
def test_a_quick_run_prints_its_figures(script: str, rss_row: str) -> None:
    printed = quick_run(script)
    assert "empty tasks" in printed
    assert "ratio to floor" in printed
    assert rss_row in printed


def test_a_quick_end_to_end_run_prints_its_figures() -> None:
    printed = quick_run("bench/end_to_end.py")
    assert "tasks/s" in printed
    assert "submit to result" in printed
    assert "results/s, 16 streams in flight" in printed
    assert "floor: a bare CreateSmallTasks" in printed
    assert "bare calls, " in printed and "ms p50 added up" in printed
    # Without Celery or redis-server, our figures come alone, with a note.
    assert (
        "ratio to celery" in printed or "the Celery baseline could not run" in printed
    )


def test_a_quick_scale_run_prints_its_figures() -> None:
    printed = quick_run("bench/scale.py")
    assert "embedded, 1" in printed
    assert "redis, 2" in printed
    assert "redis 1 pod / embedded" in printed
