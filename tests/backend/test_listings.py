"""Listings and counts of tasks, sessions, results and applications."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeVar, get_args

import pytest

from agent.backend import (
    ApplicationQuery,
    ApplicationRecord,
    Backend,
    NewTask,
    Page,
    ResultQuery,
    ResultStatus,
    SessionQuery,
    SessionRecord,
    SessionStatus,
    TaskQuery,
    TaskRecord,
    TaskStatus,
)
from agent.backend._queries import ApplicationSort, ResultSort, SessionSort, TaskSort
from gridpod_api import objects_pb2
from tests.backend.support import blob, finish, new_task, session, submit, take

_R = TypeVar("_R")
_LONG_AGO = datetime(2000, 1, 1, tzinfo=timezone.utc)
_Q = TypeVar("_Q", TaskQuery, SessionQuery, ResultQuery, ApplicationQuery)


@dataclass(frozen=True)
class Grid:
    """Two sessions whose tasks are in every state the listings tell apart."""

    first: str
    second: str
    # In the order they were created.
    tasks: list[TaskRecord]


@pytest.fixture
async def grid(backend: Backend) -> Grid:
    app = objects_pb2.TaskOptions(application_name="pricer", application_version="2")
    first, second = await session(backend, app), await session(backend)
    payload = await blob(backend)
    # One task per submit, so that no two share a creation time.
    for key in ("done", "running", "late"):
        await submit(backend, first, NewTask(payload, [key]))
    await submit(backend, first, NewTask(payload, ["waiting"], ["late"]))
    await submit(backend, second, NewTask(payload, ["other"]))
    await finish(backend, await take(backend))  # done
    await take(backend)  # running
    await backend.cancel_tasks([await _task_of(backend, first, "late")])
    listed = await backend.list_tasks(TaskQuery(sort="created_at"))
    return Grid(first, second, listed.items)


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _task_of(backend: Backend, session_id: str, key: str) -> str:
    return (await backend.get_result(session_id, key)).owner_task_id


def _ids(records: Sequence[TaskRecord]) -> list[str]:
    return [record.task_id for record in records]


async def _tasks(backend: Backend, **criteria: Any) -> list[str]:
    return _ids((await backend.list_tasks(TaskQuery(**criteria))).items)


def _sorted(
    records: Sequence[_R],
    key: Callable[[_R], Any],
    identity: Callable[[_R], Any],
    descending: bool,
) -> list[_R]:
    """As a listing sorts: a missing timestamp first, ties broken by identity."""
    ordered = sorted(
        records,
        key=lambda r: (0, identity(r)) if key(r) is None else (1, key(r), identity(r)),
    )
    return ordered[::-1] if descending else ordered


async def _pages(
    listing: Callable[[_Q], Awaitable[Page[_R]]], query: _Q, size: int
) -> list[_R]:
    """Every page of ``size`` records, checking each one's total."""
    everything = await listing(query)
    items: list[_R] = []
    while True:
        page = await listing(replace(query, offset=len(items), limit=size))
        assert page.total == everything.total
        assert len(page.items) <= size
        items += page.items
        if len(page.items) < size:
            return items


# -- tasks --------------------------------------------------------------------------


async def test_tasks_are_selected_by_session_id_and_status(
    backend: Backend, grid: Grid
) -> None:
    done, running, late, waiting, other = _ids(grid.tasks)

    assert await _tasks(backend, session_ids=[grid.second]) == [other]
    assert await _tasks(backend, session_ids=[grid.first, grid.second]) == _ids(
        grid.tasks
    )
    assert await _tasks(backend, task_ids=[waiting, done]) == [done, waiting]
    assert await _tasks(backend, statuses=[TaskStatus.PROCESSING]) == [running]
    assert await _tasks(backend, statuses=[TaskStatus.CANCELLED, TaskStatus.ERROR]) == [
        late,
        waiting,
    ]
    assert await _tasks(
        backend, excluded_statuses=[TaskStatus.COMPLETED, TaskStatus.PROCESSING]
    ) == [late, waiting, other]
    assert await _tasks(
        backend,
        session_ids=[grid.first],
        statuses=[TaskStatus.COMPLETED, TaskStatus.SUBMITTED],
    ) == [done]
    assert await _tasks(backend, task_ids=["no such task"]) == []


async def test_tasks_are_selected_by_their_times_strictly(
    backend: Backend, grid: Grid
) -> None:
    done, running, late, waiting, other = grid.tasks
    assert done.started_at is not None and running.started_at is not None

    assert await _tasks(backend, created_after=running.created_at) == _ids(
        [late, waiting, other]
    )
    assert await _tasks(
        backend, created_after=done.created_at, created_before=waiting.created_at
    ) == _ids([running, late])
    # Tasks never started fail every bound on the start.
    assert await _tasks(backend, started_after=_LONG_AGO) == _ids([done, running])
    assert await _tasks(backend, started_after=done.started_at) == _ids([running])
    assert await _tasks(backend, started_before=running.started_at) == _ids([done])
    assert await _tasks(backend, ended_before=_now()) == _ids([done, late, waiting])
    assert await _tasks(backend, ended_after=_now()) == []
    assert done.ended_at is not None
    assert await _tasks(backend, ended_after=done.ended_at) == _ids([late, waiting])


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sort", get_args(TaskSort))
async def test_tasks_are_sorted_by_each_field_both_ways(
    backend: Backend, grid: Grid, sort: TaskSort, descending: bool
) -> None:
    expected = _sorted(
        grid.tasks, lambda t: getattr(t, sort), lambda t: t.task_id, descending
    )

    page = await backend.list_tasks(TaskQuery(sort=sort, descending=descending))

    assert _ids(page.items) == _ids(expected)
    assert page.total == len(grid.tasks)


async def test_task_pages_do_not_overlap_when_the_sort_key_ties(
    backend: Backend,
) -> None:
    sid = await session(backend)
    payload = await blob(backend)
    created = await submit(
        backend, sid, *[NewTask(payload, [f"o{i}"]) for i in range(7)]
    )
    # One submission: every task has the same status and creation time.
    sorts: list[TaskSort] = ["status", "created_at", "session_id"]
    for sort in sorts:
        for descending in (False, True):
            query = TaskQuery(sort=sort, descending=descending)
            listed = await _pages(backend.list_tasks, query, 3)
            expected = sorted(_ids(created), reverse=descending)
            assert _ids(listed) == expected, (sort, descending)


async def test_a_page_is_a_slice_of_the_whole_listing(
    backend: Backend, grid: Grid
) -> None:
    page = await backend.list_tasks(TaskQuery(sort="task_id", offset=1, limit=2))
    assert page.total == 5
    assert _ids(page.items) == sorted(_ids(grid.tasks))[1:3]
    beyond = await backend.list_tasks(TaskQuery(offset=10, limit=2))
    assert (beyond.items, beyond.total) == ([], 5)
    nothing = await backend.list_tasks(TaskQuery(limit=0))
    assert (nothing.items, nothing.total) == ([], 5)
    selected = await backend.list_tasks(
        TaskQuery(session_ids=[grid.first], limit=1, descending=True)
    )
    assert (_ids(selected.items), selected.total) == ([grid.tasks[3].task_id], 4)


async def test_tasks_are_counted_by_status(backend: Backend, grid: Grid) -> None:
    assert await backend.count_tasks(TaskQuery()) == {
        TaskStatus.COMPLETED: 1,
        TaskStatus.PROCESSING: 1,
        TaskStatus.CANCELLED: 1,
        TaskStatus.ERROR: 1,
        TaskStatus.SUBMITTED: 1,
    }
    assert await backend.count_tasks(TaskQuery(session_ids=[grid.second])) == {
        TaskStatus.SUBMITTED: 1
    }
    assert await backend.count_tasks(
        TaskQuery(excluded_statuses=[TaskStatus.ERROR, TaskStatus.SUBMITTED], limit=1)
    ) == {TaskStatus.COMPLETED: 1, TaskStatus.PROCESSING: 1, TaskStatus.CANCELLED: 1}
    assert await backend.count_tasks(TaskQuery(session_ids=["no such session"])) == {}


async def test_staged_subtasks_are_listed_and_counted_once_committed(
    backend: Backend,
) -> None:
    sid = await session(backend)
    [parent] = await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    [sub] = await backend.stage_subtasks(
        attempt, [await new_task(backend, ["sub-out"])]
    )
    assert isinstance(sub, TaskRecord)
    query = TaskQuery(session_ids=[sid])

    assert await _tasks(backend, session_ids=[sid]) == [parent.task_id]
    assert await backend.count_tasks(query) == {TaskStatus.PROCESSING: 1}
    results = await backend.list_results(ResultQuery(session_ids=[sid]))
    assert ([r.key for r in results.items], results.total) == (["out"], 1)
    assert await _tasks(backend, task_ids=[sub.task_id]) == []

    await finish(backend, attempt)

    assert await _tasks(backend, session_ids=[sid]) == [parent.task_id, sub.task_id]
    assert await backend.count_tasks(query) == {
        TaskStatus.COMPLETED: 1,
        TaskStatus.SUBMITTED: 1,
    }
    results = await backend.list_results(ResultQuery(session_ids=[sid]))
    assert sorted(r.key for r in results.items) == ["out", "sub-out"]


# -- sessions -----------------------------------------------------------------------


async def _sessions(backend: Backend, **criteria: Any) -> list[str]:
    page = await backend.list_sessions(SessionQuery(**criteria))
    return [record.session_id for record in page.items]


@pytest.fixture
async def sessions(backend: Backend) -> list[SessionRecord]:
    """Three sessions, the first and last of application pricer, the middle one
    cancelled."""
    created = []
    for version in ("1", "", "2"):
        options = objects_pb2.TaskOptions(
            application_name="pricer" if version else "",
            application_version=version,
        )
        created.append(await backend.create_session(options, []))
    await backend.cancel_session(created[1].session_id)
    return (await backend.list_sessions(SessionQuery())).items


async def test_sessions_are_selected_by_every_criterion(
    backend: Backend, sessions: list[SessionRecord]
) -> None:
    one, cancelled, two = (s.session_id for s in sessions)
    assert sessions[1].cancelled_at is not None

    assert await _sessions(backend, session_ids=[two, one]) == [one, two]
    assert await _sessions(backend, statuses=[SessionStatus.CANCELLED]) == [cancelled]
    assert await _sessions(backend, excluded_statuses=[SessionStatus.CANCELLED]) == [
        one,
        two,
    ]
    assert await _sessions(backend, application_name="pricer") == [one, two]
    assert await _sessions(backend, application_version="2") == [two]
    assert await _sessions(backend, application_name="") == [cancelled]
    assert (
        await _sessions(backend, application_name="pricer", application_version="3")
        == []
    )
    assert await _sessions(backend, created_after=sessions[0].created_at) == [
        cancelled,
        two,
    ]
    assert await _sessions(backend, created_before=sessions[1].created_at) == [one]
    assert await _sessions(backend, cancelled_before=_now()) == [cancelled]
    assert await _sessions(backend, cancelled_after=_LONG_AGO) == [cancelled]
    assert await _sessions(backend, cancelled_after=sessions[1].cancelled_at) == []


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sort", get_args(SessionSort))
async def test_sessions_are_sorted_by_each_field_both_ways(
    backend: Backend, sessions: list[SessionRecord], sort: SessionSort, descending: bool
) -> None:
    expected = _sorted(
        sessions, lambda s: getattr(s, sort), lambda s: s.session_id, descending
    )

    query = SessionQuery(sort=sort, descending=descending)
    listed = await _pages(backend.list_sessions, query, 2)

    assert [s.session_id for s in listed] == [s.session_id for s in expected]


# -- results ------------------------------------------------------------------------


async def _keys(backend: Backend, **criteria: Any) -> list[str]:
    page = await backend.list_results(ResultQuery(**criteria))
    return [record.key for record in page.items]


async def test_results_are_selected_by_every_criterion(
    backend: Backend, grid: Grid
) -> None:
    done, running, *_ = grid.tasks
    everything = (await backend.list_results(ResultQuery())).items
    by_key = {r.key: r for r in everything}

    assert await _keys(backend, session_ids=[grid.second]) == ["other"]
    assert await _keys(backend, keys=["late", "done", "nope"]) == ["done", "late"]
    assert await _keys(backend, owner_task_ids=[running.task_id]) == ["running"]
    assert await _keys(backend, statuses=[ResultStatus.ABORTED]) == [
        "late",
        "waiting",
    ]
    assert await _keys(
        backend, statuses=[ResultStatus.COMPLETED, ResultStatus.CREATED]
    ) == ["done", "running", "other"]
    assert await _keys(
        backend,
        created_after=by_key["done"].created_at,
        created_before=by_key["other"].created_at,
    ) == ["running", "late", "waiting"]
    assert await _keys(backend, session_ids=[grid.first], keys=["other"]) == []
    assert by_key["done"].owner_task_id == done.task_id
    assert by_key["done"].status == ResultStatus.COMPLETED


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sort", get_args(ResultSort))
async def test_results_are_sorted_by_each_field_both_ways(
    backend: Backend, grid: Grid, sort: ResultSort, descending: bool
) -> None:
    everything = (await backend.list_results(ResultQuery())).items
    assert len(everything) == 5
    expected = _sorted(
        everything,
        lambda r: getattr(r, sort),
        lambda r: (r.session_id, r.key),
        descending,
    )

    query = ResultQuery(sort=sort, descending=descending)
    listed = await _pages(backend.list_results, query, 2)

    assert [r.key for r in listed] == [r.key for r in expected]


async def test_result_pages_do_not_overlap_when_the_sort_key_ties(
    backend: Backend,
) -> None:
    sid = await session(backend)
    payload = await blob(backend)
    keys = [f"k{i}" for i in range(7)]
    await submit(backend, sid, NewTask(payload, keys))

    for descending in (False, True):
        query = ResultQuery(sort="created_at", descending=descending)
        listed = await _pages(backend.list_results, query, 2)
        assert [r.key for r in listed] == sorted(keys, reverse=descending)


# -- applications -------------------------------------------------------------------


def _app(
    name: str, version: str, namespace: str = "", service: str = ""
) -> objects_pb2.TaskOptions:
    return objects_pb2.TaskOptions(
        application_name=name,
        application_version=version,
        application_namespace=namespace,
        application_service=service,
    )


@pytest.fixture
async def applications(backend: Backend) -> list[ApplicationRecord]:
    """Tasks of four applications, some of them several times, some in a session
    whose defaults name one."""
    sid = await session(backend, _app("pricer", "1"))
    other = await session(backend)
    payload = await blob(backend)
    submissions = [
        (sid, None),
        (sid, None),
        (sid, _app("pricer", "2")),
        (sid, _app("risk", "1", "desk", "var")),
        (other, _app("pricer", "1", "desk")),
        (other, _app("pricer", "1", "desk")),
    ]
    for number, (session_id, options) in enumerate(submissions):
        await submit(
            backend, session_id, NewTask(payload, [f"o{number}"]), options=options
        )
    return [
        ApplicationRecord("pricer", "1", "", ""),
        ApplicationRecord("pricer", "1", "desk", ""),
        ApplicationRecord("pricer", "2", "", ""),
        ApplicationRecord("risk", "1", "desk", "var"),
    ]


async def test_applications_are_distinct_and_filtered(
    backend: Backend, applications: list[ApplicationRecord]
) -> None:
    page = await backend.list_applications(ApplicationQuery())
    assert (page.items, page.total) == (applications, 4)

    pricer = await backend.list_applications(ApplicationQuery(name="pricer"))
    assert (pricer.items, pricer.total) == (applications[:3], 3)
    desk = await backend.list_applications(ApplicationQuery(namespace="desk"))
    assert desk.items == [applications[1], applications[3]]
    exact = await backend.list_applications(
        ApplicationQuery(name="pricer", version="1", namespace="", service="")
    )
    assert exact.items == [applications[0]]
    by_service = await backend.list_applications(ApplicationQuery(service="var"))
    assert by_service.items == [applications[3]]
    none = await backend.list_applications(ApplicationQuery(name="pricer", version="3"))
    assert (none.items, none.total) == ([], 0)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sort", get_args(ApplicationSort))
async def test_applications_are_sorted_by_each_field_both_ways(
    backend: Backend,
    applications: list[ApplicationRecord],
    sort: ApplicationSort,
    descending: bool,
) -> None:
    # Ties are broken by the other fields, in the order name, version, namespace,
    # service.
    fields = ["name", "version", "namespace", "service"]
    order = [sort, *(f for f in fields if f != sort)]
    expected = sorted(
        applications,
        key=lambda a: tuple(getattr(a, f) for f in order),
        reverse=descending,
    )

    query = ApplicationQuery(sort=sort, descending=descending)
    listed = await _pages(backend.list_applications, query, 3)

    assert listed == expected


async def test_applications_of_staged_subtasks_are_listed_once_committed(
    backend: Backend,
) -> None:
    sid = await session(backend, _app("pricer", "1"))
    await submit(backend, sid, await new_task(backend, ["out"]))
    attempt = await take(backend)
    await backend.stage_subtasks(
        attempt, [await new_task(backend, ["sub-out"])], _app("risk", "7")
    )
    before = await backend.list_applications(ApplicationQuery())
    assert [a.name for a in before.items] == ["pricer"]

    await finish(backend, attempt)

    after = await backend.list_applications(ApplicationQuery())
    assert [(a.name, a.version) for a in after.items] == [
        ("pricer", "1"),
        ("risk", "7"),
    ]
