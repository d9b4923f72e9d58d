"""The event log: what each transition stores, in its own transaction."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from agent.backend import (
    Attempt,
    Backend,
    Event,
    EventKind,
    MissingOutputs,
    NewTask,
    ResultStatus,
    TaskRecord,
    TaskStatus,
)
from gridpod_api import objects_pb2
from tests.backend.support import (
    AGENT,
    LEASE,
    blob,
    finish,
    new_task,
    session,
    submit,
    take,
)

NEW_TASK, TASK_STATUS = EventKind.NEW_TASK, EventKind.TASK_STATUS
NEW_RESULT, RESULT_STATUS = EventKind.NEW_RESULT, EventKind.RESULT_STATUS
RESULT_OWNER = EventKind.RESULT_OWNER
# What an event says, without its seq and time.
Said = tuple[object, ...]


def said(event: Event) -> Said:
    if event.kind in (NEW_TASK, TASK_STATUS):
        return (event.kind, event.task_id, event.status)
    if event.kind == NEW_RESULT:
        return (event.kind, event.key, event.owner_task_id, event.result_status)
    if event.kind == RESULT_STATUS:
        return (event.kind, event.key, event.result_status)
    return (event.kind, event.key, event.previous_owner_task_id, event.owner_task_id)


@dataclass
class Replay:
    """A session's tasks and results as its events describe them, in order: an
    event naming a task or result that no earlier event created fails."""

    tasks: dict[str, TaskStatus] = field(default_factory=dict)
    results: dict[str, tuple[str, ResultStatus]] = field(default_factory=dict)

    def apply(self, events: list[Event]) -> None:
        for event in events:
            if event.kind not in (NEW_TASK, TASK_STATUS):
                self._apply_to_result(event)
                continue
            # A task is new once, and changes only after that.
            assert (event.task_id in self.tasks) == (event.kind == TASK_STATUS), event
            assert event.status is not None
            self.tasks[event.task_id] = event.status

    def _apply_to_result(self, event: Event) -> None:
        if event.kind == NEW_RESULT:
            assert event.key not in self.results, event
            assert event.owner_task_id in self.tasks, event
            assert event.result_status is not None
            self.results[event.key] = (event.owner_task_id, event.result_status)
            return
        owner, status = self.results[event.key]
        if event.kind == RESULT_STATUS:
            assert event.result_status is not None
            self.results[event.key] = (owner, event.result_status)
        else:
            assert event.previous_owner_task_id == owner, event
            assert event.owner_task_id in self.tasks, event
            self.results[event.key] = (event.owner_task_id, status)

    async def check(self, backend: Backend, session_id: str) -> None:
        """The replayed state is the backend's."""
        for task_id, task_status in self.tasks.items():
            assert (await backend.get_task(task_id)).status == task_status, task_id
        for key, replayed_result in self.results.items():
            result = await backend.get_result(session_id, key)
            assert (result.owner_task_id, result.status) == replayed_result, key


async def events_since(backend: Backend, after: int, session_id: str) -> list[Event]:
    return await backend.read_events(after, session_id=session_id)


async def replayed(backend: Backend, session_id: str) -> Replay:
    """Every event of the session, replayed and checked against the backend."""
    replay = Replay()
    replay.apply(await events_since(backend, 0, session_id))
    await replay.check(backend, session_id)
    return replay


async def test_a_task_life_is_its_events_in_order(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"], []))
    attempt = await take(backend)
    await finish(backend, attempt)

    events = await events_since(backend, 0, sid)

    tid = task.task_id
    assert [said(e) for e in events] == [
        (NEW_TASK, tid, TaskStatus.SUBMITTED),
        (NEW_RESULT, "out", tid, ResultStatus.CREATED),
        (TASK_STATUS, tid, TaskStatus.DISPATCHED),
        (TASK_STATUS, tid, TaskStatus.PROCESSING),
        (RESULT_STATUS, "out", ResultStatus.COMPLETED),
        (TASK_STATUS, tid, TaskStatus.COMPLETED),
    ]
    created = events[0]
    assert created.payload_id == task.payload.blob_id
    assert created.expected_outputs == ("out",)
    assert created.data_dependencies == ()
    assert created.retry_of_ids == ()
    assert created.origin_task_id == tid
    assert {e.session_id for e in events} == {sid}
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.at is not None for e in events)
    assert await backend.last_event(sid) == seqs[-1]


async def test_a_new_task_names_its_data_dependencies(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["a"]))
    last = await backend.last_event(sid)
    [waiting] = await submit(backend, sid, await new_task(backend, ["b"], ["a"]))

    created, output = await events_since(backend, last, sid)

    assert said(created) == (NEW_TASK, waiting.task_id, TaskStatus.CREATING)
    assert created.data_dependencies == ("a",)
    assert said(output) == (NEW_RESULT, "b", waiting.task_id, ResultStatus.CREATED)


async def test_a_completed_dependency_queues_its_dependent(backend: Backend) -> None:
    sid = await session(backend)
    [first] = await submit(backend, sid, await new_task(backend, ["a"]))
    [second] = await submit(backend, sid, await new_task(backend, ["b"], ["a"]))
    attempt = await take(backend)
    last = await backend.last_event(sid)

    await finish(backend, attempt)

    assert Counter(said(e) for e in await events_since(backend, last, sid)) == Counter(
        [
            (RESULT_STATUS, "a", ResultStatus.COMPLETED),
            (TASK_STATUS, second.task_id, TaskStatus.SUBMITTED),
            (TASK_STATUS, first.task_id, TaskStatus.COMPLETED),
        ]
    )
    await replayed(backend, sid)


async def test_a_retry_is_a_new_task_that_takes_over_the_outputs(
    backend: Backend,
) -> None:
    sid = await session(backend, objects_pb2.TaskOptions(max_retries=1))
    [task] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    last = await backend.last_event(sid)

    retry = await backend.fail(attempt, "boom")

    events = await events_since(backend, last, sid)
    assert Counter(said(e) for e in events) == Counter(
        [
            (TASK_STATUS, task.task_id, TaskStatus.ERROR),
            (NEW_TASK, retry.task_id, TaskStatus.SUBMITTED),
            (RESULT_OWNER, "out", task.task_id, retry.task_id),
        ]
    )
    [created] = [e for e in events if e.kind == NEW_TASK]
    assert created.retry_of_ids == (task.task_id,)
    assert created.origin_task_id == task.task_id
    assert created.payload_id == task.payload.blob_id
    assert created.expected_outputs == ("out",)

    second = await take(backend)
    last = await backend.last_event(sid)
    await backend.fail(second, "boom again")

    assert Counter(said(e) for e in await events_since(backend, last, sid)) == Counter(
        [
            (TASK_STATUS, retry.task_id, TaskStatus.ERROR),
            (RESULT_STATUS, "out", ResultStatus.ABORTED),
        ]
    )
    await replayed(backend, sid)


async def test_an_aborted_dependency_fails_its_dependents_transitively(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [first] = await submit(backend, sid, await new_task(backend, ["a"]))
    [second] = await submit(backend, sid, await new_task(backend, ["b"], ["a"]))
    [third] = await submit(backend, sid, await new_task(backend, ["c"], ["b"]))
    attempt = await take(backend)
    last = await backend.last_event(sid)

    await backend.fail(attempt, "boom")

    assert Counter(said(e) for e in await events_since(backend, last, sid)) == Counter(
        [
            (TASK_STATUS, first.task_id, TaskStatus.ERROR),
            (RESULT_STATUS, "a", ResultStatus.ABORTED),
            (TASK_STATUS, second.task_id, TaskStatus.ERROR),
            (RESULT_STATUS, "b", ResultStatus.ABORTED),
            (TASK_STATUS, third.task_id, TaskStatus.ERROR),
            (RESULT_STATUS, "c", ResultStatus.ABORTED),
        ]
    )
    await replayed(backend, sid)


async def test_a_delegated_output_and_its_subtask_appear_when_the_parent_commits(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [parent] = await submit(backend, sid, await new_task(backend, ["out", "own"]))
    attempt = await take(backend)
    last = await backend.last_event(sid)
    [sub] = await backend.stage_subtasks(
        attempt, [await new_task(backend, ["out", "sub-own"])]
    )
    assert isinstance(sub, TaskRecord)
    assert await events_since(backend, last, sid) == []

    await finish(backend, attempt, {"own": b"value"})

    events = await events_since(backend, last, sid)
    assert Counter(said(e) for e in events) == Counter(
        [
            (NEW_TASK, sub.task_id, TaskStatus.CREATING),
            (NEW_RESULT, "sub-own", sub.task_id, ResultStatus.CREATED),
            (RESULT_OWNER, "out", parent.task_id, sub.task_id),
            (TASK_STATUS, sub.task_id, TaskStatus.SUBMITTED),
            (RESULT_STATUS, "own", ResultStatus.COMPLETED),
            (TASK_STATUS, parent.task_id, TaskStatus.COMPLETED),
        ]
    )
    [created] = [e for e in events if e.kind == NEW_TASK]
    assert created.expected_outputs == ("out", "sub-own")
    assert created.origin_task_id == sub.task_id
    await replayed(backend, sid)


async def test_a_subtask_cancelled_while_staged_appears_cancelled(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    [sub] = await backend.stage_subtasks(
        attempt, [await new_task(backend, ["out", "sub-own"])]
    )
    assert isinstance(sub, TaskRecord)
    last = await backend.last_event(sid)
    await backend.cancel_tasks([sub.task_id])
    assert await events_since(backend, last, sid) == []

    await finish(backend, attempt, {})

    replay = await replayed(backend, sid)
    assert replay.tasks[sub.task_id] == TaskStatus.CANCELLED
    assert replay.results["out"] == (sub.task_id, ResultStatus.ABORTED)
    assert replay.results["sub-own"] == (sub.task_id, ResultStatus.ABORTED)


async def test_discarded_subtasks_never_have_events(backend: Backend) -> None:
    sid = await session(backend)
    [parent] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    [sub] = await backend.stage_subtasks(
        attempt, [await new_task(backend, ["sub-out"])]
    )
    assert isinstance(sub, TaskRecord)

    await backend.fail(attempt, "boom")

    events = await events_since(backend, 0, sid)
    assert {e.task_id for e in events if e.task_id} == {parent.task_id}
    assert {e.key for e in events if e.key} == {"out"}


async def test_cancellation_aborts_outputs_and_ends_running_tasks_later(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [running] = await submit(backend, sid, await new_task(backend, ["a"]))
    attempt = await take(backend)
    [queued] = await submit(backend, sid, await new_task(backend, ["b"]))
    last = await backend.last_event(sid)

    await backend.cancel_tasks([running.task_id, queued.task_id])

    assert Counter(said(e) for e in await events_since(backend, last, sid)) == Counter(
        [
            (TASK_STATUS, running.task_id, TaskStatus.CANCELLING),
            (RESULT_STATUS, "a", ResultStatus.ABORTED),
            (TASK_STATUS, queued.task_id, TaskStatus.CANCELLED),
            (RESULT_STATUS, "b", ResultStatus.ABORTED),
        ]
    )
    last = await backend.last_event(sid)
    await backend.mark_cancelled(attempt)
    assert [said(e) for e in await events_since(backend, last, sid)] == [
        (TASK_STATUS, running.task_id, TaskStatus.CANCELLED)
    ]
    await replayed(backend, sid)


async def test_cancelling_a_session_cancels_its_tasks(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["a"]))
    last = await backend.last_event(sid)

    await backend.cancel_session(sid)

    assert Counter(said(e) for e in await events_since(backend, last, sid)) == Counter(
        [
            (TASK_STATUS, task.task_id, TaskStatus.CANCELLED),
            (RESULT_STATUS, "a", ResultStatus.ABORTED),
        ]
    )


async def test_a_released_task_is_queued_again(backend: Backend) -> None:
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["a"]))
    attempt = await take(backend)
    last = await backend.last_event(sid)

    await backend.release(attempt)

    assert [said(e) for e in await events_since(backend, last, sid)] == [
        (TASK_STATUS, task.task_id, TaskStatus.SUBMITTED)
    ]


async def test_a_refused_commit_stores_no_event(backend: Backend) -> None:
    sid = await session(backend)
    await submit(backend, sid, await new_task(backend, ["a", "b"]))
    attempt = await take(backend)
    await backend.stage_subtasks(attempt, [await new_task(backend, ["sub-out"])])
    last = await backend.last_event(sid)

    with pytest.raises(MissingOutputs):
        await backend.complete(attempt, {"a": b"only one"})

    assert await backend.last_event(sid) == last
    assert await events_since(backend, last, sid) == []


async def test_a_refused_call_among_concurrent_ones_stores_no_event(
    backend: Backend,
) -> None:
    sid = await session(backend)
    await submit(backend, sid, *[await new_task(backend, [f"o{i}"]) for i in range(6)])
    attempts = [await take(backend) for _ in range(6)]
    last = await backend.last_event(sid)

    # Every other one sends nothing: its commit is refused.
    outcomes = await asyncio.gather(
        *(
            backend.complete(a) if i % 2 else finish(backend, a)
            for i, a in enumerate(attempts)
        ),
        return_exceptions=True,
    )

    refused = {
        a.task.task_id
        for a, outcome in zip(attempts, outcomes, strict=True)
        if isinstance(outcome, MissingOutputs)
    }
    assert len(refused) == 3
    named = {e.task_id for e in await events_since(backend, last, sid) if e.task_id}
    assert named == {a.task.task_id for a in attempts} - refused


async def test_events_can_be_read_for_one_session(backend: Backend) -> None:
    first, second = await session(backend), await session(backend)
    await submit(backend, first, await new_task(backend, ["a"]))
    await submit(backend, second, await new_task(backend, ["b"]))
    await submit(backend, first, await new_task(backend, ["c"]))

    events = await backend.read_events(0, session_id=first)

    assert [e.key for e in events if e.kind == NEW_RESULT] == ["a", "c"]
    assert {e.session_id for e in events} == {first}
    assert await backend.read_events(0, session_id="no such session") == []


async def test_events_are_read_a_page_at_a_time(backend: Backend) -> None:
    sid = await session(backend)
    payload = await blob(backend)
    await submit(backend, sid, *[NewTask(payload, [f"o{i}"]) for i in range(5)])
    everything = await backend.read_events(0, session_id=sid)

    pages: list[Event] = []
    after = 0
    while page := await backend.read_events(after, session_id=sid, limit=3):
        assert len(page) <= 3
        pages += page
        after = page[-1].seq

    assert pages == everything
    assert len(everything) == 10


async def test_reading_from_the_last_event_sees_only_what_follows(
    backend: Backend,
) -> None:
    sid = await session(backend)
    assert await backend.last_event(sid) == 0
    assert await backend.read_events(0, session_id=sid) == []
    await submit(backend, sid, await new_task(backend, ["a"]))
    last = await backend.last_event(sid)
    assert await backend.read_events(last, session_id=sid) == []

    [task] = await submit(backend, sid, await new_task(backend, ["b"]))

    events = await backend.read_events(last, session_id=sid)
    assert [said(e) for e in events] == [
        (NEW_TASK, task.task_id, TaskStatus.SUBMITTED),
        (NEW_RESULT, "b", task.task_id, ResultStatus.CREATED),
    ]
    assert all(e.seq > last for e in events)
    assert await backend.last_event(sid) == events[-1].seq


async def _acquired(backend: Backend) -> tuple[str, str, Attempt]:
    """A session with one task, acquired but not started."""
    sid = await session(backend)
    [task] = await submit(backend, sid, await new_task(backend, ["out"], []))
    attempt = await backend.acquire(AGENT, "", LEASE)
    assert attempt is not None
    return sid, task.task_id, attempt


def _statuses_of(events: list[Event], task_id: str) -> list[TaskStatus | None]:
    return [e.status for e in events if e.kind == TASK_STATUS and e.task_id == task_id]


# Five seconds ago: a moment that cannot be mistaken for the call's own clock.
def _a_while_ago() -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=5)


async def _check_started(
    backend: Backend, sid: str, record: TaskRecord, began: datetime
) -> None:
    """The task started at ``began``, with one PROCESSING event, then ended."""
    assert record.started_at is not None
    assert abs((record.started_at - began).total_seconds()) < 0.01
    assert _statuses_of(await events_since(backend, 0, sid), record.task_id) == [
        TaskStatus.DISPATCHED,
        TaskStatus.PROCESSING,
        record.status,
    ]
    await replayed(backend, sid)


async def test_a_commit_records_the_start_it_is_handed(backend: Backend) -> None:
    sid, _, attempt = await _acquired(backend)
    began = _a_while_ago()

    await backend.complete(attempt, {"out": b"v"}, started_at=began)
    done = await backend.get_task(attempt.task.task_id)

    assert done.status == TaskStatus.COMPLETED
    await _check_started(backend, sid, done, began)


async def test_a_failure_records_the_start_it_is_handed(backend: Backend) -> None:
    sid, _, attempt = await _acquired(backend)
    began = _a_while_ago()

    failed = await backend.fail(attempt, "boom", TaskStatus.ERROR, started_at=began)

    assert failed.status == TaskStatus.ERROR
    await _check_started(backend, sid, failed, began)


async def test_a_start_handed_to_a_refused_commit_is_recorded_once(
    backend: Backend,
) -> None:
    # The agent hands the same start to the failure that follows the refusal.
    sid, _, attempt = await _acquired(backend)
    began = _a_while_ago()
    with pytest.raises(MissingOutputs):
        await backend.complete(attempt, {}, started_at=began)

    failed = await backend.fail(attempt, "none", TaskStatus.ERROR, started_at=began)

    await _check_started(backend, sid, failed, began)


async def test_a_start_recorded_already_is_kept_by_the_commit(backend: Backend) -> None:
    sid, tid, attempt = await _acquired(backend)
    began = _a_while_ago()
    await backend.start(attempt, began)
    assert (await backend.get_task(tid)).status == TaskStatus.PROCESSING

    later_moment = datetime.now(timezone.utc) + timedelta(seconds=5)
    await backend.complete(attempt, {"out": b"v"}, started_at=later_moment)
    done = await backend.get_task(attempt.task.task_id)

    await _check_started(backend, sid, done, began)
