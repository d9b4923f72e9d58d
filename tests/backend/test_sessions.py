"""Sessions: creation, reading and cancellation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.backend import Backend, NotFound, SessionQuery, SessionStatus
from gridpod_api import objects_pb2


async def test_a_created_session_reads_back_running(backend: Backend) -> None:
    options = objects_pb2.TaskOptions(max_retries=3, priority=2, partition_id="gpu")
    options.options["kernel"] = "square"
    options.max_duration.FromTimedelta(timedelta(minutes=5))

    created = await backend.create_session(options, ["gpu", "cpu"])
    read = await backend.get_session(created.session_id)

    assert read == created
    assert read.status == SessionStatus.RUNNING
    assert read.default_options == options
    assert read.partition_ids == ("gpu", "cpu")
    assert read.created_at.tzinfo is not None
    assert abs(read.created_at - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert read.cancelled_at is None


async def test_sessions_get_distinct_ids(backend: Backend) -> None:
    options = objects_pb2.TaskOptions()
    first = await backend.create_session(options, [])
    second = await backend.create_session(options, [])
    assert first.session_id != second.session_id


async def test_an_unknown_session_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.get_session("no-such-session")
    with pytest.raises(NotFound):
        await backend.cancel_session("no-such-session")


async def test_cancelling_twice_changes_nothing(backend: Backend) -> None:
    created = await backend.create_session(objects_pb2.TaskOptions(), [])

    cancelled = await backend.cancel_session(created.session_id)
    again = await backend.cancel_session(created.session_id)

    assert cancelled.status == SessionStatus.CANCELLED
    assert cancelled.cancelled_at is not None
    assert cancelled.cancelled_at.tzinfo is not None
    assert again == cancelled
    assert await backend.get_session(created.session_id) == cancelled


async def test_a_session_keeps_who_created_it(backend: Backend) -> None:
    options = objects_pb2.TaskOptions()
    alice = await backend.create_session(options, (), owner="alice")
    nobody = await backend.create_session(options, ())

    assert (await backend.get_session(alice.session_id)).owner == "alice"
    assert (await backend.get_session(nobody.session_id)).owner == ""
    owned = await backend.list_sessions(SessionQuery(owners=["alice"]))
    assert [s.session_id for s in owned.items] == [alice.session_id]
