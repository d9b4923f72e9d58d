"""Records and events as the Redis backend stores them: one hash per session, task
and result, one stream entry per event (see ``_keys`` for where they live)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from agent.backend._base import (
    BlobRef,
    ResultRecord,
    ResultStatus,
    SessionRecord,
    SessionStatus,
    TaskRecord,
    TaskStatus,
)
from agent.backend._queries import Event, EventKind
from agent.backend._sqlite_queries import EVENT_FIELDS
from gridpod_api import objects_pb2

__all__ = [
    "event",
    "fields",
    "result_record",
    "session_record",
    "task_record",
]

Fields = dict[str, bytes]


def fields(flat: Sequence[bytes]) -> Fields:
    """A hash as HGETALL (or a function replying with it) returns it."""
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode()


def _time(value: bytes | None) -> datetime | None:
    if value is None or value == b"":
        return None
    return datetime.fromtimestamp(float(value), timezone.utc)


def _ids(value: bytes | None) -> tuple[str, ...]:
    # Lua's JSON encoder writes an empty list as {}.
    decoded = json.loads(value) if value else None
    return tuple(decoded) if decoded else ()


def session_record(session_id: str, row: Fields) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        status=SessionStatus(int(row["st"])),
        default_options=objects_pb2.TaskOptions.FromString(row["opt"]),
        partition_ids=_ids(row.get("parts")),
        created_at=_time(row["c"]) or datetime.now(timezone.utc),
        cancelled_at=_time(row.get("x")),
        owner=_text(row.get("ow")),
    )


def task_record(row: Fields) -> TaskRecord:
    return TaskRecord(
        task_id=row["id"].decode(),
        session_id=row["sid"].decode(),
        status=TaskStatus(int(row["st"])),
        options=objects_pb2.TaskOptions.FromString(row["opt"]),
        payload=BlobRef(row["pay"].decode(), int(row["psz"])),
        data_dependencies=_ids(row.get("deps")),
        expected_outputs=_ids(row.get("outs")),
        parent_task_ids=_ids(row.get("par")),
        retry_of_ids=_ids(row.get("rty")),
        status_message=_text(row.get("msg")),
        owner_agent_id=_text(row.get("agent")),
        created_at=_time(row.get("c")),
        submitted_at=_time(row.get("sub")),
        acquired_at=_time(row.get("acq")),
        started_at=_time(row.get("sta")),
        ended_at=_time(row.get("end")),
    )


def result_record(session_id: str, key: str, row: Fields) -> ResultRecord:
    return ResultRecord(
        session_id=session_id,
        key=key,
        owner_task_id=row["own"].decode(),
        status=ResultStatus(int(row["st"])),
        size=int(row.get("sz") or 0),
        created_at=_time(row.get("c")),
        completed_at=_time(row.get("done")),
    )


def event(session_id: str, entry_id: bytes, entry: dict[bytes, bytes]) -> Event:
    """One entry of a session's stream; its id is ``<seq>-1``."""
    kind = EventKind(int(entry[b"k"]))
    data: list[Any] = json.loads(entry[b"d"])
    return Event(
        seq=int(entry_id.split(b"-", 1)[0]),
        session_id=session_id,
        kind=kind,
        at=_time(entry.get(b"at")),
        **EVENT_FIELDS[kind](data),
    )
