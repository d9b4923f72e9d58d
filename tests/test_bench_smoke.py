"""The benchmarks still run: a quick pass that checks they print their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_worker_benchmark_quick_run_prints_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/worker.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "empty tasks" in done.stdout
    assert "ratio to floor" in done.stdout
    assert "peak RSS (VmHWM)" in done.stdout


def test_agent_benchmark_quick_run_prints_figures() -> None:
    done = subprocess.run(
        [sys.executable, "bench/agent.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "empty tasks" in done.stdout
    assert "ratio to floor" in done.stdout
    assert "agent peak RSS (VmHWM)" in done.stdout
