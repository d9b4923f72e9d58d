"""``agent control-plane`` as a real process: serving, and stopping on SIGTERM."""

from __future__ import annotations

import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.backend import Backend
from gridpod_api import sessions_common_pb2, sessions_service_pb2_grpc
from tests.control.conftest import ROOT, ControlPlaneProcess, new_session


async def test_serves_until_sigterm(
    control_plane_process: ControlPlaneProcess, backend: Backend
) -> None:
    session_id = await new_session(backend)
    async with grpc.aio.insecure_channel(control_plane_process.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest()
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = await sessions_service_pb2_grpc.SessionsStub(channel).ListSessions(
            sessions_common_pb2.ListSessionsRequest(page_size=10)
        )
    assert [session.session_id for session in listing.sessions] == [session_id]
    assert control_plane_process.terminate() == 0
    logs = control_plane_process.logs()
    assert f"control plane serving on {control_plane_process.address}" in logs
    assert "stopped" in logs


def test_a_bad_listen_address_is_named() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "control-plane",
            "--backend",
            "sqlite:///tmp/unused.db",
            "--listen",
            "nowhere",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"'nowhere' is not an address" in done.stderr
