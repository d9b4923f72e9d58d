"""Queries answered over records in memory: the Redis backend has no secondary
indexes, so it reads the candidate records and keeps, sorts and pages them here,
with the same meaning as the embedded backend's SQL."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from agent.backend._base import ResultRecord, SessionRecord, TaskRecord
from agent.backend._queries import (
    ApplicationQuery,
    ApplicationRecord,
    Page,
    ResultQuery,
    SessionQuery,
    TaskQuery,
)

__all__ = [
    "application_page",
    "result_page",
    "session_page",
    "task_matches",
    "task_page",
]

_T = TypeVar("_T")
_Paging = TaskQuery | SessionQuery | ResultQuery | ApplicationQuery


def _among(value: Any, values: Collection[Any], *, negated: bool = False) -> bool:
    if not values:
        return True
    return (value in values) != negated


def _between(
    value: datetime | None, after: datetime | None, before: datetime | None
) -> bool:
    # A record lacking the time fails every bound on it.
    if after is None and before is None:
        return True
    if value is None:
        return False
    return (after is None or value > after) and (before is None or value < before)


def _equals(value: str, wanted: str | None) -> bool:
    return wanted is None or value == wanted


def task_matches(query: TaskQuery, task: TaskRecord) -> bool:
    return (
        _among(task.session_id, query.session_ids)
        and _among(task.task_id, query.task_ids)
        and _among(task.status, query.statuses)
        and _among(task.status, query.excluded_statuses, negated=True)
        and _between(task.created_at, query.created_after, query.created_before)
        and _between(task.started_at, query.started_after, query.started_before)
        and _between(task.ended_at, query.ended_after, query.ended_before)
    )


def _session_matches(query: SessionQuery, session: SessionRecord) -> bool:
    options = session.default_options
    return (
        _among(session.session_id, query.session_ids)
        and _among(session.owner, query.owners)
        and _among(session.status, query.statuses)
        and _among(session.status, query.excluded_statuses, negated=True)
        and _equals(options.application_name, query.application_name)
        and _equals(options.application_version, query.application_version)
        and _between(session.created_at, query.created_after, query.created_before)
        and _between(
            session.cancelled_at, query.cancelled_after, query.cancelled_before
        )
    )


def _result_matches(query: ResultQuery, result: ResultRecord) -> bool:
    return (
        _among(result.session_id, query.session_ids)
        and _among(result.key, query.keys)
        and _among(result.owner_task_id, query.owner_task_ids)
        and _among(result.status, query.statuses)
        and _between(result.created_at, query.created_after, query.created_before)
    )


def _application_matches(query: ApplicationQuery, app: ApplicationRecord) -> bool:
    return (
        _equals(app.name, query.name)
        and _equals(app.version, query.version)
        and _equals(app.namespace, query.namespace)
        and _equals(app.service, query.service)
    )


def _sort_key(value: Any) -> tuple[int, Any]:
    # A missing value sorts first, as NULL does in SQL: older than any time.
    if value is None:
        return (0, 0)
    if isinstance(value, datetime):
        return (1, value.timestamp())
    return (1, value)


def _page(
    records: Iterable[_T],
    keep: Callable[[_T], bool],
    order: Callable[[_T], Sequence[Any]],
    query: _Paging,
) -> Page[_T]:
    if query.offset < 0 or (query.limit is not None and query.limit < 0):
        raise ValueError(
            f"a page needs an offset and a limit of 0 or more, not offset "
            f"{query.offset} and limit {query.limit}"
        )
    kept = sorted(
        (record for record in records if keep(record)),
        key=lambda record: [_sort_key(value) for value in order(record)],
        reverse=query.descending,
    )
    end = None if query.limit is None else query.offset + query.limit
    return Page(kept[query.offset : end], len(kept))


def _ordered(record: Any, sort: str, identity: Sequence[str]) -> list[Any]:
    columns = [sort, *(column for column in identity if column != sort)]
    return [getattr(record, column) for column in columns]


def task_page(query: TaskQuery, tasks: Iterable[TaskRecord]) -> Page[TaskRecord]:
    return _page(
        tasks,
        lambda task: task_matches(query, task),
        lambda task: _ordered(task, query.sort, ("task_id",)),
        query,
    )


def session_page(
    query: SessionQuery, sessions: Iterable[SessionRecord]
) -> Page[SessionRecord]:
    return _page(
        sessions,
        lambda session: _session_matches(query, session),
        lambda session: _ordered(session, query.sort, ("session_id",)),
        query,
    )


def result_page(
    query: ResultQuery, results: Iterable[ResultRecord]
) -> Page[ResultRecord]:
    return _page(
        results,
        lambda result: _result_matches(query, result),
        lambda result: _ordered(result, query.sort, ("session_id", "key")),
        query,
    )


def application_page(
    query: ApplicationQuery, applications: Iterable[ApplicationRecord]
) -> Page[ApplicationRecord]:
    identity = ("name", "version", "namespace", "service")
    return _page(
        applications,
        lambda app: _application_matches(query, app),
        lambda app: _ordered(app, query.sort, identity),
        query,
    )
