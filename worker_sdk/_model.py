"""Plain-Python views of the API's task options, task definitions and created tasks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Union

from gridpod_api import objects_pb2

__all__ = [
    "Configuration",
    "CreatedTask",
    "DataSource",
    "TaskDefinition",
    "TaskOptions",
]

# What a result or a subtask payload can be made of: bytes-like data, the path of a
# file streamed from disk (a ``str`` is a path), or an iterable of bytes-like chunks.
DataSource = Union[
    bytes,
    bytearray,
    memoryview,
    str,
    "os.PathLike[str]",
    Iterable[bytes | bytearray | memoryview],
]

_TEXT_FIELDS = (
    "partition_id",
    "application_name",
    "application_version",
    "application_namespace",
    "application_service",
    "engine_type",
)
_INT_FIELDS = ("max_retries", "priority")


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """Task options; a field left as ``None`` takes the session's default.

    The wire format has no presence for scalars, so zero and the empty string read
    as unset too: ``priority=0`` means "the session's priority".
    """

    options: Mapping[str, str] | None = None
    max_duration: timedelta | None = None
    max_retries: int | None = None
    priority: int | None = None
    partition_id: str | None = None
    application_name: str | None = None
    application_version: str | None = None
    application_namespace: str | None = None
    application_service: str | None = None
    engine_type: str | None = None

    def __post_init__(self) -> None:
        if self.options is not None:
            bad = [k for k, v in self.options.items() if not isinstance(v, str)]
            if bad or not all(isinstance(k, str) for k in self.options):
                raise TypeError(f"task options must map str to str; offending: {bad}")
            object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.max_duration is not None and self.max_duration < timedelta(0):
            raise ValueError(f"max_duration must not be negative: {self.max_duration}")

    @property
    def kernel(self) -> str | None:
        """The kernel named by the ``kernel`` option, if any."""
        return (self.options or {}).get("kernel") or None

    def to_proto(self) -> objects_pb2.TaskOptions:
        message = objects_pb2.TaskOptions()
        if self.options:
            message.options.update(self.options)
        if self.max_duration is not None:
            message.max_duration.FromTimedelta(self.max_duration)
        for name in _INT_FIELDS + _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        return message

    @classmethod
    def from_proto(cls, message: objects_pb2.TaskOptions) -> TaskOptions:
        values: dict[str, object] = {
            name: getattr(message, name) or None for name in _INT_FIELDS + _TEXT_FIELDS
        }
        return cls(
            options=dict(message.options),
            max_duration=(
                message.max_duration.ToTimedelta()
                if message.HasField("max_duration")
                else None
            ),
            **values,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Configuration:
    """What the agent tells the worker about the stream, per task."""

    data_chunk_max_size: int


@dataclass(frozen=True)
class TaskDefinition:
    """A task for ``Task.create_tasks``.

    ``expected_outputs`` are result keys the new task must produce; listing one of the
    creating task's own expected outputs delegates that output to the new task.
    """

    payload: DataSource = b""
    expected_outputs: Sequence[str] = ()
    data_dependencies: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("expected_outputs", "data_dependencies"):
            keys = getattr(self, name)
            if isinstance(keys, str):
                raise TypeError(f"{name} takes a list of keys, not the string {keys!r}")
            object.__setattr__(self, name, tuple(keys))
        if not self.expected_outputs:
            raise ValueError("a task needs at least one expected output")


@dataclass(frozen=True)
class CreatedTask:
    """A task the agent accepted: its id and the keys it was created with."""

    task_id: str
    expected_outputs: tuple[str, ...] = field(default=())
    data_dependencies: tuple[str, ...] = field(default=())
