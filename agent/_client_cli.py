"""Commands for people at a terminal: submit tasks, wait, list them, read results.

Each talks to a control plane through ``worker_sdk.client``, found with
``--control-plane`` or ``$GRIDPOD_CONTROL_PLANE``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from agent._local_cli import CONTROL_PLANE_VARIABLE
from worker_sdk import TaskOptions
from worker_sdk.client import (
    Client,
    ClientError,
    Session,
    SubmissionError,
    SubmittedTask,
    TaskSpec,
    TaskStatus,
    WaitTimeout,
)

__all__ = ["result", "submit", "tasks", "wait"]

# A wait shows its progress once it has lasted this long, if stderr is a terminal.
_PROGRESS_AFTER = 1.0
_PROGRESS_EVERY = 0.5
_BAR_WIDTH = 30

_F = TypeVar("_F", bound=Callable[..., Any])
_TLS_FILES = "gridpod.tls"
_address_option = click.option(
    "--control-plane",
    "address",
    envvar=CONTROL_PLANE_VARIABLE,
    default="127.0.0.1:5001",
    show_default=True,
    help="The control plane: host:port or unix:///path.",
)


def _keep_tls_file(
    context: click.Context, parameter: click.Parameter, value: str | None
) -> None:
    """Keep a TLS file's path for ``_client``: every command takes them alike."""
    assert parameter.name is not None
    context.meta.setdefault(_TLS_FILES, {})[parameter.name] = value


def _tls_option(name: str, what: str) -> Callable[[_F], _F]:
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        envvar=f"GRIDPOD_{name.upper()}",
        type=click.Path(exists=True, dir_okay=False),
        expose_value=False,
        callback=_keep_tls_file,
        help=f"{what} (env GRIDPOD_{name.upper()}).",
    )


def _control_plane_option(command: _F) -> _F:
    """--control-plane, and the TLS files to reach it with."""
    for option in (
        _tls_option("tls_key", "With --tls-cert: its private key"),
        _tls_option("tls_cert", "A client certificate, for a control plane that asks"),
        _tls_option("tls_ca", "Reach the control plane over TLS, trusting this CA"),
        _address_option,
    ):
        command = option(command)
    return command


_session_option = click.option(
    "--session",
    "session_id",
    envvar="GRIDPOD_SESSION",
    required=True,
    help="The session (env GRIDPOD_SESSION).",
)


@contextmanager
def _session(address: str, session_id: str) -> Iterator[Session]:
    with _client(address) as client:
        yield client.open_session(session_id)


@contextmanager
def _client(address: str) -> Iterator[Client]:
    tls = click.get_current_context().meta.get(_TLS_FILES, {})
    try:
        with Client(
            address,
            tls_ca=tls.get("tls_ca"),
            tls_cert=tls.get("tls_cert"),
            tls_key=tls.get("tls_key"),
        ) as client:
            yield client
    except ClientError as error:
        raise click.ClickException(str(error)) from error


def _options(
    kernel: str | None, pairs: Sequence[str], max_retries: int | None
) -> TaskOptions:
    options: dict[str, str] = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise click.BadParameter(
                f"{pair!r} is not NAME=VALUE", param_hint="--option"
            )
        options[name] = value
    if kernel is not None:
        options["kernel"] = kernel
    return TaskOptions(options=options, max_retries=max_retries)


@click.command()
@_control_plane_option
@click.option(
    "--session",
    "session_id",
    envvar="GRIDPOD_SESSION",
    help="Add to this session instead of a new one.",
)
@click.option("--kernel", help="The kernel the tasks run (task option 'kernel').")
@click.option(
    "--option",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A task option; repeat for more.",
)
@click.option(
    "--max-retries", type=click.IntRange(0), help="Retries after a failed attempt."
)
@click.option(
    "--depends-on",
    "dependencies",
    multiple=True,
    metavar="KEY",
    help="A data dependency of every task; repeat for more.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per task.")
@click.argument(
    "payloads",
    nargs=-1,
    required=True,
    type=click.Path(allow_dash=True, dir_okay=False),
)
def submit(
    address: str,
    session_id: str | None,
    kernel: str | None,
    pairs: tuple[str, ...],
    max_retries: int | None,
    dependencies: tuple[str, ...],
    as_json: bool,
    payloads: tuple[str, ...],
) -> None:
    """Submit one task per PAYLOAD file (- reads standard input).

    Prints the session, then each task's id and output key.
    """
    options = _options(kernel, pairs, max_retries)
    specs = [
        TaskSpec(
            sys.stdin.buffer.read() if path == "-" else path,
            data_dependencies=dependencies,
        )
        for path in payloads
    ]
    with _client(address) as client:
        session = (
            client.open_session(session_id) if session_id else client.create_session()
        )
        try:
            created = session.submit(specs, options)
        except SubmissionError as error:
            created = error.submitted
            _print_created(session.session_id, created, as_json)
            raise click.ClickException(str(error)) from error
    _print_created(session.session_id, created, as_json)


def _print_created(
    session_id: str, created: Sequence[SubmittedTask], as_json: bool
) -> None:
    if not as_json:
        click.echo(f"session {session_id}")
    for task in created:
        task_id, outputs = task.task_id, list(task.expected_outputs)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "session_id": session_id,
                        "task_id": task_id,
                        "expected_outputs": outputs,
                    }
                )
            )
        else:
            click.echo(f"{task_id}\t{','.join(outputs)}")


@click.command()
@_control_plane_option
@_session_option
@click.option(
    "--timeout", type=click.FloatRange(0), help="Give up after this many seconds."
)
@click.option("--stop-on-error", is_flag=True, help="Return at the first failed task.")
def wait(
    address: str, session_id: str, timeout: float | None, stop_on_error: bool
) -> None:
    """Wait until every task of the session is final; print the count by status.

    Exits 1 when some task failed or was cancelled, 2 on timeout.
    """
    with _session(address, session_id) as session, _progress(session, sys.stderr):
        try:
            counts = session.wait(stop_on_error=stop_on_error, timeout=timeout)
        except WaitTimeout as error:
            click.echo(str(error), err=True)
            sys.exit(2)
    for status, count in sorted(counts.items()):
        click.echo(f"{status.name.lower()}\t{count}")
    if set(counts) - {TaskStatus.COMPLETED}:
        sys.exit(1)


@contextmanager
def _progress(session: Session, out: TextIO) -> Iterator[None]:
    """Redraw a progress bar on ``out`` while the block runs, if it is a terminal."""
    if not out.isatty():
        yield
        return
    done = threading.Event()
    drawer = threading.Thread(target=_draw, args=(session, out, done), daemon=True)
    drawer.start()
    try:
        yield
    finally:
        done.set()
        drawer.join()


def _draw(session: Session, out: TextIO, done: threading.Event) -> None:
    if done.wait(_PROGRESS_AFTER):
        return
    drawn = False
    while not done.is_set():
        try:
            counts = session.count_tasks()
        except ClientError:
            break
        total = sum(counts.values())
        final = sum(n for status, n in counts.items() if status.is_final)
        failed = final - counts.get(TaskStatus.COMPLETED, 0)
        filled = _BAR_WIDTH * final // total if total else 0
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        out.write(f"\r[{bar}] {final}/{total} final, {failed} failed ")
        out.flush()
        drawn = True
        done.wait(_PROGRESS_EVERY)
    if drawn:
        out.write("\n")


@click.command()
@_control_plane_option
@_session_option
@click.option(
    "--status",
    type=click.Choice([s.name.lower() for s in TaskStatus if s.name != "UNSPECIFIED"]),
    help="Only tasks in this status.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per task.")
def tasks(address: str, session_id: str, status: str | None, as_json: bool) -> None:
    """List the tasks of the session: id, status, times, error."""
    wanted = TaskStatus[status.upper()] if status else None
    with _session(address, session_id) as session:
        listed = session.list_tasks(wanted)
    for task in listed:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "task_id": task.task_id,
                        "status": task.status.name,
                        "created_at": _iso(task.created_at),
                        "ended_at": _iso(task.ended_at),
                        "error": task.error,
                    }
                )
            )
        else:
            click.echo(
                f"{task.task_id}\t{task.status.name}\t"
                f"{_iso(task.ended_at) or '-'}\t{task.error}"
            )


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""


@click.command()
@_control_plane_option
@_session_option
@click.argument("key")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write here (default: standard output).",
)
def result(address: str, session_id: str, key: str, output: str) -> None:
    """Write the data of result KEY."""
    with _session(address, session_id) as session:
        if output == "-":
            for chunk in session.stream_result(key):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        started = time.monotonic()
        size = session.result_to(key, Path(output))
    click.echo(f"{key}: {size} bytes in {time.monotonic() - started:.2f} s", err=True)
