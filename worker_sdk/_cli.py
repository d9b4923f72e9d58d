"""``python -m worker_sdk MODULE:CLASS``: run a task handler as a worker server."""

from __future__ import annotations

import asyncio
import importlib
import signal
from pathlib import Path

import click
from prometheus_client import start_http_server

from worker_sdk import _logging
from worker_sdk._data import DEFAULT_SPILL_THRESHOLD
from worker_sdk._errors import WorkerSdkError
from worker_sdk._handler import TaskHandler
from worker_sdk._runtime import (
    address_parameter,
    channel_options,
    channel_tls,
    log_format_option,
    log_level_option,
    run,
    server_tls,
    tls_options,
)
from worker_sdk._server import WorkerConfig, WorkerServer


def load_handler(spec: str) -> TaskHandler:
    """Import ``MODULE:CLASS`` and instantiate the handler class."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise click.BadParameter(f"{spec!r} is not MODULE:CLASS", param_hint="HANDLER")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {error}", param_hint="HANDLER"
        ) from error
    handler_class = getattr(module, class_name, None)
    if not (isinstance(handler_class, type) and issubclass(handler_class, TaskHandler)):
        raise click.BadParameter(
            f"{spec!r} is not a TaskHandler subclass", param_hint="HANDLER"
        )
    return handler_class()


async def _serve(handler: TaskHandler, config: WorkerConfig) -> None:
    # Built inside the loop: grpc.aio channels and servers bind to the running loop.
    server = WorkerServer(handler, config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.drain)
    await server.run()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("handler")
@channel_options("--address", "--agent")
@tls_options("WorkerChannel")
@log_format_option
@log_level_option(at_info="At info, one line per task.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), help="Serve /metrics here."
)
@click.option(
    "--kernel-threads",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Threads that run plain (non-async) kernels.",
)
@click.option(
    "--spill-threshold",
    type=click.IntRange(0),
    default=DEFAULT_SPILL_THRESHOLD,
    show_default=True,
    help="Payloads and data larger than this many bytes are held in a temporary file.",
)
@click.option("--spill-dir", type=click.Path(file_okay=False), help="Where to spill.")
def main(
    handler: str,
    address: str,
    agent: str,
    worker_socket_type: str | None,
    agent_socket_type: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    agent_tls_ca: Path | None,
    log_format: str,
    log_level: str,
    metrics_port: int | None,
    kernel_threads: int,
    spill_threshold: int,
    spill_dir: str | None,
) -> None:
    """Serve the TaskHandler HANDLER (MODULE:CLASS) to the pod's agent."""
    _logging.configure(log_format, log_level.upper())
    config = WorkerConfig(
        address=address_parameter(address, worker_socket_type, "--address"),
        agent_address=address_parameter(agent, agent_socket_type, "--agent"),
        tls=server_tls(tls_cert, tls_key),
        agent_tls=channel_tls(agent_tls_ca),
        kernel_threads=kernel_threads,
        spill_threshold=spill_threshold,
        spill_dir=spill_dir,
    )
    task_handler = load_handler(handler)
    if metrics_port is not None:
        start_http_server(metrics_port)
    try:
        run(_serve(task_handler, config))
    except WorkerSdkError as error:
        raise click.ClickException(str(error)) from error


def entry_point() -> None:
    main(prog_name="python -m worker_sdk")
