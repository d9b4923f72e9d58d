"""The ``agent`` command."""

from importlib.metadata import version

import click


@click.group()
@click.version_option(version("gridpod"), prog_name="agent")
def main() -> None:
    """Run and operate the agent sidecar of an ArmoniK-compatible compute pod."""
