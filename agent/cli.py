"""The ``agent`` command: run the sidecar, and manage the resources it serves.

Environment variables are read here and nowhere else in the package.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from agent._client_cli import result, submit, tasks, wait
from agent._config import DEFAULT_BUSY_POLL, AgentConfig
from agent._errors import AgentError
from agent._local_cli import local
from agent._service import AgentLimits
from agent._sidecar import Sidecar
from agent.backend import Backend, NotFound, open_backend
from agent.control import (
    PERMISSIONS,
    AuthConfig,
    AuthConfigError,
    ControlPlane,
    ControlPlaneConfig,
)
from worker_sdk._address import Address
from worker_sdk._errors import WorkerSdkError
from worker_sdk._logging import configure as configure_logging
from worker_sdk._runtime import (
    address_parameter,
    channel_options,
    channel_tls,
    log_format_option,
    log_level_option,
    pem_file,
    server_tls,
    tls_options,
)
from worker_sdk._runtime import run as run_loop

_CHUNK = 1024 * 1024
_F = TypeVar("_F", bound=Callable[..., Any])

_AGENT_LIMITS = AgentLimits()
_CONTROL_PLANE_DEFAULTS = ControlPlaneConfig()
# Calls still running when the control plane is told to stop get this long; a
# client's health watch never ends by itself, so this is also how long it delays.
_CONTROL_PLANE_GRACE = 2.0


def _open(url: str) -> Backend:
    try:
        return open_backend(url)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--backend") from error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("gridpod"), prog_name="agent")
def main() -> None:
    """Run and operate the agent sidecar of an ArmoniK-compatible compute pod."""


_backend_option = click.option(
    "--backend",
    "backend_url",
    envvar="GRIDPOD_BACKEND",
    required=True,
    help="Shared state, e.g. sqlite:///var/lib/gridpod/state.db.",
)


def _limit_option(flag: str, default: int, what: str) -> Callable[[_F], _F]:
    return click.option(
        flag,
        type=click.IntRange(1),
        default=default,
        show_default=True,
        help=f"Refuse {what} with RESOURCE_EXHAUSTED.",
    )


def _task_limit_options(
    defaults: AgentLimits | ControlPlaneConfig,
) -> Callable[[_F], _F]:
    """The limits the agent and the control plane share, on the tasks created."""

    def add(command: _F) -> _F:
        # Applied last to first, so that --help lists them in this order.
        for option in reversed(
            (
                _limit_option(
                    "--max-payload-size",
                    defaults.max_payload_size,
                    "a task payload larger than this many bytes",
                ),
                _limit_option(
                    "--max-tasks-per-request",
                    defaults.max_tasks_per_request,
                    "a request creating more tasks than this",
                ),
                _limit_option(
                    "--max-data-dependencies",
                    defaults.max_data_dependencies,
                    "a task with more data dependencies than this",
                ),
                _limit_option(
                    "--max-expected-outputs",
                    defaults.max_expected_outputs,
                    "a task with more expected outputs than this",
                ),
            )
        ):
            command = option(command)
        return command

    return add


@main.command()
@_backend_option
@channel_options("--worker", "--listen")
@tls_options("AgentChannel")
@click.option("--partition", default="", help="The partition whose tasks to take.")
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Tasks run at once on the worker.",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    help="Serve /livez, /readyz and /metrics over HTTP on this port.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Same as --health-port (one endpoint serves both).",
)
@click.option(
    "--lease",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Lease in seconds.",
)
@click.option(
    "--grace-period",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to finish on SIGTERM.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1),
    default=1024 * 1024,
    show_default=True,
    help="Chunk size of data streamed to the worker.",
)
@click.option(
    "--busy-poll",
    type=click.IntRange(0),
    default=DEFAULT_BUSY_POLL // timedelta(microseconds=1),
    show_default=True,
    help="Microseconds the agent keeps polling, rather than sleeping, after each "
    "hand-off with the worker (0: never).",
)
@click.option(
    "--agent-id", help="Name of this agent in task records (default: host-pid)."
)
@_task_limit_options(_AGENT_LIMITS)
@_limit_option(
    "--max-result-size",
    _AGENT_LIMITS.max_result_size,
    "a result larger than this many bytes",
)
@log_format_option
@log_level_option(at_info="At info, one line per task transition.")
def run(
    backend_url: str,
    worker: str,
    listen: str,
    worker_socket_type: str | None,
    agent_socket_type: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    worker_tls_ca: Path | None,
    partition: str,
    concurrency: int,
    health_port: int | None,
    metrics_port: int | None,
    lease: float,
    grace_period: float,
    chunk_size: int,
    busy_poll: int,
    agent_id: str | None,
    max_payload_size: int,
    max_tasks_per_request: int,
    max_data_dependencies: int,
    max_expected_outputs: int,
    max_result_size: int,
    log_format: str,
    log_level: str,
) -> None:
    """Pull tasks from BACKEND and run them on the worker beside this agent."""
    configure_logging(log_format, log_level.upper())
    if (
        health_port is not None
        and metrics_port is not None
        and health_port != metrics_port
    ):
        raise click.BadParameter(
            "--health-port and --metrics-port name one endpoint: give one port",
            param_hint="--metrics-port",
        )
    config = AgentConfig(
        backend_url=backend_url,
        worker_address=address_parameter(worker, worker_socket_type, "--worker"),
        listen_address=address_parameter(listen, agent_socket_type, "--listen"),
        tls=server_tls(tls_cert, tls_key),
        worker_tls=channel_tls(worker_tls_ca),
        partition_id=partition,
        concurrency=concurrency,
        health_port=health_port if health_port is not None else metrics_port,
        lease=timedelta(seconds=lease),
        grace_period=timedelta(seconds=grace_period),
        data_chunk_max_size=chunk_size,
        busy_poll=timedelta(microseconds=busy_poll),
    )
    if agent_id:
        config = dataclasses.replace(config, agent_id=agent_id)
    limits = AgentLimits(
        max_payload_size=max_payload_size,
        max_result_size=max_result_size,
        max_tasks_per_request=max_tasks_per_request,
        max_data_dependencies=max_data_dependencies,
        max_expected_outputs=max_expected_outputs,
    )
    # Fail fast on a bad URL or an unreadable state file, before the loop starts.
    asyncio.run(_open(backend_url).close())
    try:
        run_loop(_serve(config, limits))
    except (AgentError, WorkerSdkError) as error:
        raise click.ClickException(str(error)) from error


async def _serve(config: AgentConfig, limits: AgentLimits) -> None:
    sidecar = Sidecar(config, open_backend(config.backend_url), limits)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sidecar.drain)
    await sidecar.run()


# -- control plane ----------------------------------------------------------------


@main.command("control-plane")
@_backend_option
@click.option(
    "--listen",
    default="127.0.0.1:5001",
    show_default=True,
    help="Where clients connect: host:port (port 0 picks one) or unix:///path.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1),
    default=_CONTROL_PLANE_DEFAULTS.data_chunk_max_size,
    show_default=True,
    help="Chunk size of result data streamed to clients.",
)
@_task_limit_options(_CONTROL_PLANE_DEFAULTS)
@_limit_option(
    "--max-streams-per-client",
    _CONTROL_PLANE_DEFAULTS.max_streams_per_client,
    "a stream past this many open at once from one client address",
)
@click.option(
    "--tls-cert",
    type=pem_file,
    help="Serve over TLS with this certificate (PEM, with its chain); TCP only.",
)
@click.option("--tls-key", type=pem_file, help="The private key of --tls-cert (PEM).")
@click.option(
    "--tls-client-ca",
    type=pem_file,
    help="Require client certificates from this CA (PEM): their CN or a SAN "
    "names the user.",
)
@click.option(
    "--auth-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Users' roles and roles' permissions (JSON, or YAML with PyYAML); "
    "without it, every user has every permission.",
)
@log_format_option
@log_level_option(at_info="At info, one line per session cancelled and refused call.")
def control_plane(
    backend_url: str,
    listen: str,
    chunk_size: int,
    max_payload_size: int,
    max_tasks_per_request: int,
    max_data_dependencies: int,
    max_expected_outputs: int,
    max_streams_per_client: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_config: Path | None,
    log_format: str,
    log_level: str,
) -> None:
    """Serve ArmoniK's client API (Submitter, Sessions, Tasks, Results, Events...)
    from BACKEND until SIGTERM or SIGINT."""
    configure_logging(log_format, log_level.upper())
    address = address_parameter(listen, None, "--listen")
    tls = server_tls(tls_cert, tls_key, tls_client_ca)
    if auth_config is not None and tls_client_ca is None:
        raise click.BadParameter(
            "a permissions file needs client certificates to tell users apart: "
            "give --tls-client-ca too",
            param_hint="--auth-config",
        )
    config = ControlPlaneConfig(
        data_chunk_max_size=chunk_size,
        max_payload_size=max_payload_size,
        max_tasks_per_request=max_tasks_per_request,
        max_data_dependencies=max_data_dependencies,
        max_expected_outputs=max_expected_outputs,
        max_streams_per_client=max_streams_per_client,
        tls=tls,
        auth=_auth_config(auth_config),
    )
    # Fail fast on a bad URL or an unreadable state file, before the loop starts.
    asyncio.run(_open(backend_url).close())
    try:
        run_loop(_serve_control_plane(backend_url, config, address))
    except (AgentError, WorkerSdkError) as error:
        raise click.ClickException(str(error)) from error


def _auth_config(path: Path | None) -> AuthConfig | None:
    if path is None:
        return None
    try:
        config = AuthConfig.read(path)
        config.check(PERMISSIONS)
    except AuthConfigError as error:
        raise click.BadParameter(str(error), param_hint="--auth-config") from error
    return config


async def _serve_control_plane(
    backend_url: str, config: ControlPlaneConfig, address: Address
) -> None:
    backend = open_backend(backend_url)
    plane = ControlPlane(backend, config, address)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await plane.start()
        await stopping.wait()
    finally:
        await plane.stop(_CONTROL_PLANE_GRACE)
        await backend.close()


# -- resources --------------------------------------------------------------------


@main.group()
def resources() -> None:
    """Manage the blobs that GetResourceData serves to every session."""


async def _file_chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


async def _put(backend: Backend, key: str, stream: BinaryIO) -> int:
    try:
        blob = await backend.write_blob(_file_chunks(stream))
        await backend.put_resource(key, blob)
        return blob.size
    finally:
        await backend.close()


async def _get(backend: Backend, key: str, out: BinaryIO) -> None:
    try:
        async for chunk in backend.read_resource(key):
            out.write(chunk)
    finally:
        await backend.close()


async def _list(backend: Backend) -> dict[str, int]:
    try:
        return await backend.list_resources()
    finally:
        await backend.close()


async def _delete(backend: Backend, key: str) -> None:
    try:
        await backend.delete_resource(key)
    finally:
        await backend.close()


def _run_resource_command(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        return asyncio.run(main)
    except NotFound as error:
        raise click.ClickException(str(error)) from error


@resources.command("put")
@_backend_option
@click.argument("key")
@click.argument("source", type=click.File("rb"))
def resources_put(backend_url: str, key: str, source: BinaryIO) -> None:
    """Store SOURCE (a file, or - for stdin) as resource KEY."""
    size = _run_resource_command(_put(_open(backend_url), key, source))
    click.echo(f"{key}: {size} bytes")


@resources.command("get")
@_backend_option
@click.argument("key")
@click.argument(
    "destination", type=click.Path(dir_okay=False, allow_dash=True), default="-"
)
def resources_get(backend_url: str, key: str, destination: str) -> None:
    """Write resource KEY to DESTINATION (default: stdout)."""
    if destination == "-":
        _run_resource_command(_get(_open(backend_url), key, sys.stdout.buffer))
        return
    path = Path(destination)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as out:
            _run_resource_command(_get(_open(backend_url), key, out))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@resources.command("ls")
@_backend_option
def resources_ls(backend_url: str) -> None:
    """List resource keys with their sizes in bytes."""
    for key, size in sorted(_run_resource_command(_list(_open(backend_url))).items()):
        click.echo(f"{size}\t{key}")


@resources.command("rm")
@_backend_option
@click.argument("key")
def resources_rm(backend_url: str, key: str) -> None:
    """Delete resource KEY."""
    _run_resource_command(_delete(_open(backend_url), key))


# -- a grid on this machine, and commands for people ------------------------------

main.add_command(local)
for _command in (submit, wait, tasks, result):
    main.add_command(_command)
