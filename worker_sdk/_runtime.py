"""What the worker's and the agent's command lines share: the loop, addresses and
TLS files."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from worker_sdk._address import (
    DEFAULT_AGENT_ADDRESS,
    DEFAULT_WORKER_ADDRESS,
    Address,
    ChannelTls,
    ServerTls,
)

__all__ = [
    "address_parameter",
    "channel_options",
    "channel_tls",
    "log_format_option",
    "log_level_option",
    "pem_file",
    "run",
    "server_tls",
    "tls_options",
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


# A PEM file given on the command line or in the environment: it must exist.
pem_file = click.Path(exists=True, dir_okay=False, path_type=Path)

Channel = Literal["WorkerChannel", "AgentChannel"]

# The channel a process calls, by the one it serves, and the flag of its CA.
_PEERS: dict[Channel, tuple[Channel, str]] = {
    "WorkerChannel": ("AgentChannel", "--agent-tls-ca"),
    "AgentChannel": ("WorkerChannel", "--worker-tls-ca"),
}


def tls_options(served: Channel) -> Callable[[F], F]:
    """TLS of the pod's TCP channels: ``--tls-cert`` and ``--tls-key`` for the
    channel this process serves, and ``--agent-tls-ca`` or ``--worker-tls-ca`` for
    the one it calls, each read from ``ComputePlane__<Channel>__Tls*`` when not
    given. A pod's containers can share the six variables: each reads its own."""
    peer, ca_flag = _PEERS[served]
    options = [
        click.option(
            "--tls-cert",
            envvar=f"ComputePlane__{served}__TlsCert",
            type=pem_file,
            help="Serve over TLS with this certificate (PEM); TCP only.",
        ),
        click.option(
            "--tls-key",
            envvar=f"ComputePlane__{served}__TlsKey",
            type=pem_file,
            help="The private key of --tls-cert (PEM).",
        ),
        click.option(
            ca_flag,
            envvar=f"ComputePlane__{peer}__TlsCa",
            type=pem_file,
            help="Call the peer over TLS, trusting this CA (PEM); TCP only.",
        ),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def server_tls(
    cert: Path | None, key: Path | None, client_ca: Path | None = None
) -> ServerTls | None:
    """The TLS of a server from its command line; None when plaintext."""
    if cert is None and key is None:
        if client_ca is not None:
            raise click.BadParameter(
                "client certificates need TLS: give --tls-cert and --tls-key too",
                param_hint="--tls-client-ca",
            )
        return None
    if cert is None or key is None:
        missing = "--tls-cert" if cert is None else "--tls-key"
        raise click.BadParameter(
            "--tls-cert and --tls-key go together: give both", param_hint=missing
        )
    return ServerTls(cert=cert, key=key, client_ca=client_ca)


def channel_tls(ca: Path | None) -> ChannelTls | None:
    """What a channel trusts, from its command line; None when plaintext."""
    return None if ca is None else ChannelTls(ca=ca)


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
