"""Health checks and the worker's stop hook, run inside the images as
``python /opt/gridpod/deploy/probe.py CHECK ...``; exit status 0 when it passes.

The images are slim, with no curl and no grpc_health_probe: Python does it all.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gridpod_api import objects_pb2, worker_common_pb2, worker_service_pb2_grpc
from worker_sdk import Address
from worker_sdk._address import DEFAULT_AGENT_ADDRESS, DEFAULT_WORKER_ADDRESS

_SERVING = worker_common_pb2.HealthCheckReply.ServingStatus.SERVING
_POLL = 0.2


class ProbeFailed(Exception):
    """The check did not pass; the message says what was seen."""


def _channel_address(channel: str, default: str) -> Address:
    """The address a pod's process reads from ArmoniK's ``ComputePlane__*``."""
    prefix = f"ComputePlane__{channel}__"
    return Address.parse(
        os.environ.get(prefix + "Address", default),
        os.environ.get(prefix + "SocketType"),
    )


def check_http(url: str, timeout: float) -> str:
    """The agent's /readyz or /livez: 200, where 503 means not ready."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return f"{url}: {answer.status}"
    except urllib.error.HTTPError as error:
        raise ProbeFailed(f"{url}: {error.code} {error.reason}") from error
    except OSError as error:
        raise ProbeFailed(f"{url}: {error}") from error


def check_worker(timeout: float) -> str:
    """Worker.HealthCheck on the socket the worker serves; a draining worker
    answers NOT_SERVING."""
    address = _channel_address("WorkerChannel", DEFAULT_WORKER_ADDRESS)
    with grpc.insecure_channel(address.grpc_target) as channel:
        stub = worker_service_pb2_grpc.WorkerStub(channel)
        try:
            reply = stub.HealthCheck(objects_pb2.Empty(), timeout=timeout)
        except grpc.RpcError as error:
            raise ProbeFailed(f"worker at {address}: {error.code().name}") from error
    status = worker_common_pb2.HealthCheckReply.ServingStatus.Name(reply.status)
    if reply.status != _SERVING:
        raise ProbeFailed(f"worker at {address}: {status}")
    return f"worker at {address}: {status}"


def check_grpc(target: str, timeout: float) -> str:
    """Standard gRPC health checking of the whole server (the control plane)."""
    address = Address.parse(target)
    with grpc.insecure_channel(address.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as error:
            raise ProbeFailed(f"{address}: {error.code().name}") from error
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise ProbeFailed(f"{address}: {status}")
    return f"{address}: {status}"


def _accepts(address: Address) -> bool:
    family = socket.AF_UNIX if address.kind == "unix" else socket.AF_INET
    target: str | tuple[str, int] = address.target
    if address.kind == "tcp":
        host, _, port = address.target.rpartition(":")
        target = (host, int(port))
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(target)
        except OSError:
            return False
    return True


def wait_agent_stopped(limit: float) -> str:
    """Return once the agent's socket takes no connection, at most ``limit`` s.

    The worker's pre-stop hook: Kubernetes signals every container of a pod at
    once, and a worker that drains first refuses the tasks its agent still hands
    it. Waiting for the agent to finish draining keeps the worker serving them.
    """
    address = _channel_address("AgentChannel", DEFAULT_AGENT_ADDRESS)
    deadline = time.monotonic() + limit
    while _accepts(address):
        if time.monotonic() > deadline:
            raise ProbeFailed(f"the agent at {address} still runs after {limit:g}s")
        time.sleep(_POLL)
    return f"the agent at {address} has stopped"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe.py", description=__doc__)
    parser.add_argument("--timeout", type=float, default=3.0, help="per call, s")
    checks = parser.add_subparsers(dest="check", required=True)
    http = checks.add_parser("http", help="the URL answers 200")
    http.add_argument("url")
    checks.add_parser("worker", help="the pod's worker reports SERVING")
    control = checks.add_parser("grpc", help="a gRPC server reports SERVING")
    control.add_argument("address", help="host:port or unix:///path")
    stopped = checks.add_parser(
        "agent-stopped", help="wait until the pod's agent has stopped"
    )
    stopped.add_argument("limit", type=float, help="seconds to wait at most")
    return parser


def run(argv: list[str]) -> str:
    arguments = _parser().parse_args(argv)
    if arguments.check == "http":
        return check_http(arguments.url, arguments.timeout)
    if arguments.check == "worker":
        return check_worker(arguments.timeout)
    if arguments.check == "grpc":
        return check_grpc(arguments.address, arguments.timeout)
    return wait_agent_stopped(arguments.limit)


def main() -> None:
    try:
        print(run(sys.argv[1:]))
    except (ProbeFailed, ValueError) as error:
        sys.exit(f"probe failed: {error}")


if __name__ == "__main__":
    main()
