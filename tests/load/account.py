"""What the backend holds after a load run, against what the clients did: every
good task COMPLETED with its one result, and no task left by a broken request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping

from agent.backend import (
    Backend,
    ResultQuery,
    ResultStatus,
    SessionQuery,
    TaskQuery,
    TaskStatus,
)
from tests.load.good import GoodTask, Ledger

# Ids named in one problem line, at most.
_EXAMPLES = 3


def _some(items: Iterable[str]) -> str:
    listed = sorted(items)
    more = f" and {len(listed) - _EXAMPLES} more" if len(listed) > _EXAMPLES else ""
    return ", ".join(listed[:_EXAMPLES]) + more


async def account(
    backend: Backend, good: Ledger, bad_sessions: Mapping[str, int]
) -> list[str]:
    """The problems found: one line each, naming the session and some ids."""
    by_session: dict[str, dict[str, GoodTask]] = {s: {} for s in good.sessions}
    for task in good.tasks:
        by_session[task.session_id][task.key] = task
    problems = []
    for session_id, tasks in by_session.items():
        problems += await _good_session(backend, session_id, tasks)
    problems += await _other_sessions(backend, by_session, bad_sessions)
    counts = await backend.count_tasks(TaskQuery())
    expected = len(good.tasks) + sum(bad_sessions.values())
    if sum(counts.values()) != expected:
        problems.append(
            f"the grid holds {sum(counts.values())} tasks ({_statuses(counts)}), "
            f"not the {expected} that whole requests created"
        )
    return problems


async def _good_session(
    backend: Backend, session_id: str, expected: Mapping[str, GoodTask]
) -> list[str]:
    tasks = (await backend.list_tasks(TaskQuery(session_ids=[session_id]))).items
    problems = _compare(
        f"session {session_id}: tasks",
        Counter(task.task_id for task in tasks),
        {task.task_id for task in expected.values()},
    )
    unfinished = [t.task_id for t in tasks if t.status != TaskStatus.COMPLETED]
    if unfinished:
        problems.append(f"session {session_id}: not COMPLETED: {_some(unfinished)}")
    results = (await backend.list_results(ResultQuery(session_ids=[session_id]))).items
    problems += _compare(
        f"session {session_id}: results",
        Counter(result.key for result in results),
        set(expected),
    )
    misowned = [
        r.key
        for r in results
        if r.key in expected and r.owner_task_id != expected[r.key].task_id
    ]
    if misowned:
        problems.append(
            f"session {session_id}: results owned by another task: {_some(misowned)}"
        )
    absent = [r.key for r in results if r.status != ResultStatus.COMPLETED]
    if absent:
        problems.append(f"session {session_id}: results not COMPLETED: {_some(absent)}")
    return problems


def _compare(what: str, found: Counter[str], expected: Collection[str]) -> list[str]:
    """Lines for ids found twice, found but not expected, expected but missing."""
    problems = []
    twice = [item for item, count in found.items() if count > 1]
    extra = [item for item in found if item not in expected]
    missing = [item for item in expected if item not in found]
    for label, items in (("twice", twice), ("extra", extra), ("missing", missing)):
        if items:
            problems.append(f"{what} {label}: {_some(items)}")
    return problems


async def _other_sessions(
    backend: Backend, good: Collection[str], bad_sessions: Mapping[str, int]
) -> list[str]:
    """Every session no good client used holds what a bad client made whole and
    valid, and nothing else: none but those registered holds anything."""
    problems = []
    for session in (await backend.list_sessions(SessionQuery())).items:
        session_id = session.session_id
        if session_id in good:
            continue
        allowed = bad_sessions.get(session_id, 0)
        counts = await backend.count_tasks(TaskQuery(session_ids=[session_id]))
        results = await backend.list_results(ResultQuery(session_ids=[session_id]))
        held = sum(counts.values())
        # Whatever their status: a bad client does not wait for its tasks.
        if held != allowed:
            problems.append(
                f"session {session_id} of a bad client holds {held} tasks "
                f"({_statuses(counts)}), not {allowed}"
            )
        if results.total != allowed:
            problems.append(
                f"session {session_id} of a bad client holds {results.total} "
                f"results, not {allowed}: {_some(r.key for r in results.items)}"
            )
    return problems


def _statuses(counts: Mapping[TaskStatus, int]) -> str:
    return ", ".join(f"{count} {status.name}" for status, count in counts.items())
