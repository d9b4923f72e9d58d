"""What the worker's and the agent's command lines share: the loop and addresses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from worker_sdk._address import DEFAULT_AGENT_ADDRESS, DEFAULT_WORKER_ADDRESS, Address

__all__ = [
    "address_parameter",
    "channel_options",
    "log_format_option",
    "log_level_option",
    "run",
]

F = TypeVar("F", bound=Callable[..., Any])

log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line, with the fields of each event.",
)


def log_level_option(default: str = "info", at_info: str = "") -> Callable[[F], F]:
    """``--log-level``, also read from ``GRIDPOD_LOG_LEVEL`` (which ``agent local``
    sets for the processes it starts)."""
    return click.option(
        "--log-level",
        envvar="GRIDPOD_LOG_LEVEL",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default=default,
        show_default=True,
        help=at_info or None,
    )


def channel_options(worker_flag: str, agent_flag: str) -> Callable[[F], F]:
    """The addresses of the pod's two channels, under each command's own flags,
    read from ArmoniK's ``ComputePlane__*`` variables when not given."""
    options = [
        click.option(
            worker_flag,
            envvar="ComputePlane__WorkerChannel__Address",
            default=DEFAULT_WORKER_ADDRESS,
            show_default=True,
            help="The worker's address: unix:///path, /path or host:port.",
        ),
        click.option(
            agent_flag,
            envvar="ComputePlane__AgentChannel__Address",
            default=DEFAULT_AGENT_ADDRESS,
            show_default=True,
            help="The address of the Agent service the worker calls.",
        ),
        click.option(
            "--worker-socket-type",
            envvar="ComputePlane__WorkerChannel__SocketType",
            hidden=True,
        ),
        click.option(
            "--agent-socket-type",
            envvar="ComputePlane__AgentChannel__SocketType",
            hidden=True,
        ),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it exists (not on Windows), else on asyncio."""
    try:
        import uvloop  # noqa: PLC0415 - an optional import, by platform
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def address_parameter(text: str, socket_type: str | None, option: str) -> Address:
    """Parse an address given on the command line, blaming ``option`` if it is bad."""
    try:
        return Address.parse(text, socket_type)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from error
