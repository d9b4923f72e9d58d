"""``agent local``: a grid on this machine, from one command."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys

import click

from agent._errors import AgentError
from agent._local import LocalConfig, LocalGrid
from agent.control._config import ControlPlaneConfig
from worker_sdk._logging import configure as configure_logging
from worker_sdk._runtime import address_parameter, log_format_option, log_level_option
from worker_sdk._runtime import run as run_loop

__all__ = ["local"]

# The variable through which a command started by --run finds the control plane.
CONTROL_PLANE_VARIABLE = "GRIDPOD_CONTROL_PLANE"


@click.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "--listen",
    default="127.0.0.1:5001",
    show_default=True,
    help="Where the control plane listens: host:port or unix:///path.",
)
@click.option(
    "--backend",
    "backend_url",
    envvar="GRIDPOD_BACKEND",
    help="Shared state to keep (default: a temporary file, deleted at exit).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Pods to run: one agent and one worker each.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Tasks each agent runs at once on its worker.",
)
@click.option("--partition", default="", help="The partition the agents serve.")
@click.option(
    "--grace-period",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds running tasks get to finish when the grid stops.",
)
@click.option(
    "--run",
    "client_command",
    help=(
        "Run this command once the grid is ready (with $GRIDPOD_CONTROL_PLANE set "
        "to the control plane's address), then stop and exit with its status."
    ),
)
@log_format_option
@log_level_option(
    default="warning",
    at_info="At info, every line of the agents, workers and control plane.",
)
@click.argument("worker_command", nargs=-1, required=True, type=click.UNPROCESSED)
def local(
    listen: str,
    backend_url: str | None,
    workers: int,
    concurrency: int,
    partition: str,
    grace_period: float,
    client_command: str | None,
    log_format: str,
    log_level: str,
    worker_command: tuple[str, ...],
) -> None:
    """Run a control plane and WORKERS pods on this machine, each worker started
    from WORKER_COMMAND (given after --), until Ctrl-C or SIGTERM.

    Example: agent local --workers 2 -- python -m worker_sdk mypkg:MyHandler
    """
    configure_logging(log_format, log_level.upper())
    # Read by every process of the grid, the user's workers included.
    os.environ["GRIDPOD_LOG_LEVEL"] = log_level
    config = LocalConfig(
        worker_command=worker_command,
        workers=workers,
        listen=address_parameter(listen, None, "--listen"),
        backend_url=backend_url,
        concurrency=concurrency,
        partition_id=partition,
        grace_period=grace_period,
        log_format=log_format,
        control=ControlPlaneConfig(),
    )
    outcome: list[int] = []
    try:
        run_loop(_serve(LocalGrid(config), client_command, outcome))
    except AgentError as error:
        raise click.ClickException(str(error)) from error
    if outcome:
        sys.exit(outcome[0])


async def _serve(
    grid: LocalGrid, client_command: str | None, outcome: list[int]
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await grid.start()
    try:
        if client_command is None:
            click.echo(
                f"control plane on {grid.address}; Ctrl-C stops the grid", err=True
            )
            await stopping.wait()
        else:
            outcome.append(await _run_client(client_command, grid.address, stopping))
    finally:
        await grid.stop()


async def _run_client(command: str, address: str, stopping: asyncio.Event) -> int:
    env = {**os.environ, CONTROL_PLANE_VARIABLE: address}
    try:
        process = await asyncio.create_subprocess_exec(*shlex.split(command), env=env)
    except OSError as error:
        raise AgentError(f"cannot run {command!r}: {error}") from error
    finished = asyncio.ensure_future(process.wait())
    interrupted = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({finished, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if not finished.done():
        process.terminate()
        await finished
    code = process.returncode if process.returncode is not None else 1
    # Killed by a signal: the shell's convention, 128 plus the signal's number.
    return code if code >= 0 else 128 - code
