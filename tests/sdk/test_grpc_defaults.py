"""The gRPC settings our processes start with, and when they give way."""

from __future__ import annotations

import os
import subprocess
import sys

from worker_sdk._grpc_defaults import GRPC_DEFAULTS

PRINT_SETTING = "import os; print(os.environ.get('GRPC_EXPERIMENTS'))"


def _setting_after(imports: str, environment: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in GRPC_DEFAULTS}
    done = subprocess.run(
        [sys.executable, "-c", f"{imports}; {PRINT_SETTING}"],
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_importing_the_sdk_or_the_agent_sets_them() -> None:
    for package in ("worker_sdk", "agent", "worker_sdk.client"):
        assert (
            _setting_after(f"import {package}", {})
            == (GRPC_DEFAULTS["GRPC_EXPERIMENTS"])
        )


def test_a_setting_of_the_environment_is_kept() -> None:
    for chosen in ("", "-event_engine_client"):
        preset = {"GRPC_EXPERIMENTS": chosen}
        assert _setting_after("import agent", preset) == chosen


def test_grpc_loaded_first_keeps_its_own_defaults() -> None:
    # Set then, they would describe settings the process does not run with.
    assert _setting_after("import grpc; import worker_sdk", {}) == "None"
