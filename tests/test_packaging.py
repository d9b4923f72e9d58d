"""The installed distribution: its packages, entry points and declared requirements."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_distribution_ships_the_three_packages() -> None:
    files = {str(f) for f in metadata.files("gridpod") or []}
    top_levels = {Path(f).parts[0] for f in files}
    editable = any(f.endswith(".pth") or "__editable__" in f for f in files)
    assert editable or {"worker_sdk", "agent", "gridpod_api"} <= top_levels
    for package in ("worker_sdk", "agent", "gridpod_api"):
        assert (ROOT / package / "py.typed").exists()


def test_requirements() -> None:
    meta = metadata.metadata("gridpod")
    assert meta["Requires-Python"] == ">=3.10"
    requires = metadata.requires("gridpod") or []
    names = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in requires}
    assert {"grpcio", "protobuf", "uvloop", "prometheus-client", "click"} <= names
    uvloop = next(r for r in requires if r.startswith("uvloop"))
    assert 'sys_platform != "win32"' in uvloop
    assert any('extra == "redis"' in r and r.startswith("redis") for r in requires)


def test_agent_console_script_runs() -> None:
    script = Path(sys.executable).parent / "agent"
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"agent, version {metadata.version('gridpod')}"


def test_generated_modules_import_under_their_own_name() -> None:
    # The generated package must not need its folder on sys.path, and must not be
    # importable as ``armonik``, the name of ArmoniK's own package.
    code = (
        "import importlib.util, gridpod_api.submitter_service_pb2_grpc as s;"
        "print(s.SubmitterStub.__name__, importlib.util.find_spec('armonik'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert done.stdout.split() == ["SubmitterStub", "None"]
