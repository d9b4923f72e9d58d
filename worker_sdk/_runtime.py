"""What the worker's and the agent's command lines share: the loop and addresses."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import click

from worker_sdk._address import Address

__all__ = ["address_parameter", "run"]


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
