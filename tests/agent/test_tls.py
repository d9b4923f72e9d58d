"""TLS on the pod's channels in Tcp mode: the agent serves the Agent service and the
worker serves Worker over TLS, each calling the other trusting the CA.

The worker takes its TLS files as options, the agent from the ``ComputePlane__*``
variables, so that both ways of giving them are exercised.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent._ports import free_port
from agent._worker import WorkerLink
from gridpod_api import objects_pb2, worker_service_pb2_grpc
from tests.agent.conftest import HANDLER, ROOT, Grid, options
from tests.agent.handlers import Grid as GridHandler
from tests.control.certificates import Pki, make_pki
from worker_sdk import Address, WorkerConfig, WorkerServer
from worker_sdk._address import ChannelTls, ServerTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class TcpPod:
    """An agent and a worker on TCP ports of 127.0.0.1, both over TLS."""

    folder: Path
    backend_url: str
    pki: Pki
    worker_port: int = field(default_factory=free_port)
    agent_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, role: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.folder / f"{role}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        )

    def start(self) -> None:
        pki = self.pki
        self._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "worker_sdk",
                HANDLER,
                "--address",
                f"127.0.0.1:{self.worker_port}",
                "--agent",
                f"127.0.0.1:{self.agent_port}",
                "--tls-cert",
                str(pki.server.cert),
                "--tls-key",
                str(pki.server.key),
                "--agent-tls-ca",
                str(pki.ca.cert),
            ],
            {},
        )
        self._spawn(
            "agent",
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--backend",
                self.backend_url,
                "--health-port",
                str(self.health_port),
                "--agent-id",
                "tls-pod",
            ],
            {
                "ComputePlane__WorkerChannel__Address": f"127.0.0.1:{self.worker_port}",
                "ComputePlane__WorkerChannel__SocketType": "Tcp",
                "ComputePlane__WorkerChannel__TlsCa": str(pki.ca.cert),
                "ComputePlane__AgentChannel__Address": f"127.0.0.1:{self.agent_port}",
                "ComputePlane__AgentChannel__SocketType": "Tcp",
                "ComputePlane__AgentChannel__TlsCert": str(pki.server.cert),
                "ComputePlane__AgentChannel__TlsKey": str(pki.server.key),
            },
        )

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the agent's /readyz says its worker answers, over TLS."""
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                assert process.poll() is None, self.logs()
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"the pod is not ready after {timeout}s\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.stem}\n{path.read_text(errors='replace')}"
            for path in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def tcp_pod(grid: Grid, pki: Pki) -> Iterator[TcpPod]:
    folder = grid.folder / "tcp-pod"
    folder.mkdir()
    pod = TcpPod(folder, grid.backend_url, pki)
    pod.start()
    try:
        pod.wait_ready()
        yield pod
    finally:
        pod.stop()


async def _health_code(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    """How a health check of the worker on ``port`` ends: OK or its status."""
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        stub = worker_service_pb2_grpc.WorkerStub(channel)
        try:
            await stub.HealthCheck(objects_pb2.Empty(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return "OK"


async def test_a_task_runs_end_to_end_over_tls(grid: Grid, tcp_pod: TcpPod) -> None:
    session_id = await grid.session()
    await grid.submit(session_id, b"over TLS", ["out"], options("echo"))
    try:
        assert await grid.value(session_id, "out", timeout=20) == b"over TLS"
    except AssertionError:
        raise AssertionError(tcp_pod.logs()) from None


async def test_the_pod_refuses_plaintext_and_strangers(tcp_pod: TcpPod) -> None:
    pki = tcp_pod.pki
    trusting = grpc.ssl_channel_credentials(pki.ca.cert.read_bytes())
    stranger = grpc.ssl_channel_credentials(pki.stranger.cert.read_bytes())
    assert await _health_code(tcp_pod.worker_port, trusting) == "OK"
    for port in (tcp_pod.worker_port, tcp_pod.agent_port):
        assert await _health_code(port, None) == "UNAVAILABLE"
        assert await _health_code(port, stranger) == "UNAVAILABLE"


async def test_the_agent_finds_a_tls_worker_unhealthy_unless_it_trusts_it(
    grid: Grid, pki: Pki
) -> None:
    port = free_port()
    config = WorkerConfig(
        address=Address.parse(f"127.0.0.1:{port}"),
        agent_address=Address.parse("127.0.0.1:1"),
        tls=ServerTls(cert=pki.server.cert, key=pki.server.key),
    )
    server = WorkerServer(GridHandler(), config)
    await server.start()
    links = {
        "plaintext": WorkerLink(config.address, grid.backend, 1024),
        "stranger": WorkerLink(
            config.address, grid.backend, 1024, ChannelTls(ca=pki.stranger.cert)
        ),
        "trusting": WorkerLink(
            config.address, grid.backend, 1024, ChannelTls(ca=pki.ca.cert)
        ),
    }
    try:
        healthy = {name: await link.is_healthy() for name, link in links.items()}
    finally:
        for link in links.values():
            await link.close()
        await server.stop()
    assert healthy == {"plaintext": False, "stranger": False, "trusting": True}


async def test_a_unix_socket_stays_plaintext(
    grid: Grid, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    socket = Address("unix", str(grid.folder / "worker.sock"))
    config = WorkerConfig(
        address=socket,
        agent_address=Address("unix", str(grid.folder / "agent.sock")),
        tls=ServerTls(cert=pki.server.cert, key=pki.server.key),
    )
    server = WorkerServer(GridHandler(), config)
    with caplog.at_level(logging.WARNING):
        await server.start()
    link = WorkerLink(socket, grid.backend, 1024)
    try:
        assert await link.is_healthy()
    finally:
        await link.close()
        await server.stop()
    assert "stays plaintext" in caplog.text
