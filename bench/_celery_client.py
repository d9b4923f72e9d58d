"""The client's side of the Celery baseline: blocking calls, timed the way
``bench/end_to_end.py`` times our client's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from celery.exceptions import (
    TimeoutError as CeleryTimeout,
)
from celery.result import (
    AsyncResult,
    ResultSet,
)

from bench import celery_app
from bench._common import BenchError

__all__ = ["configure", "latencies", "read_results", "throughput", "wait_ready"]

VALUE = "ok"

configure = celery_app.configure


def wait_ready(timeout: float, check_alive: Callable[[], None]) -> None:
    """Return once the worker ran a task, polling so that its death is seen."""
    pending = celery_app.empty.apply_async()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive()
        try:
            _check(pending.get(timeout=0.5))
            return
        except CeleryTimeout:
            continue
    raise BenchError(f"the Celery worker ran no task within {timeout} s")


def throughput(tasks: int, timeout: float) -> tuple[float, float, list[str]]:
    """Seconds to submit ``tasks`` empty tasks, seconds until the last result, and
    the ids of the tasks."""
    started = time.perf_counter()
    results = [celery_app.empty.apply_async() for _ in range(tasks)]
    submitted = time.perf_counter()
    # Redis supports a native join: one MGET round over the pending results.
    values = ResultSet(results).get(timeout=timeout)
    ended = time.perf_counter()
    for value in values:
        _check(value)
    return submitted - started, ended - started, [result.id for result in results]


def latencies(samples: int) -> dict[str, list[float]]:
    """Seconds of each phase of one task at a time, sample by sample."""
    phases: dict[str, list[float]] = {"apply_async": [], "get": []}
    for _ in range(samples):
        started = time.perf_counter()
        result = celery_app.empty.apply_async()
        applied = time.perf_counter()
        _check(result.get(timeout=30))
        phases["apply_async"].append(applied - started)
        phases["get"].append(time.perf_counter() - applied)
    return phases


def read_results(task_ids: Sequence[str], streams: int) -> float:
    """Seconds to read every stored result with ``streams`` threads, each reading
    its share one after the other through a fresh ``AsyncResult``."""
    shares = [task_ids[start::streams] for start in range(streams)]
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_read_share, args=(share, errors), daemon=True)
        for share in shares
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.perf_counter()
    if errors:
        raise BenchError(f"{len(errors)} Celery reader(s) failed: {errors[0]!r}")
    return ended - started


def _read_share(task_ids: Sequence[str], errors: list[BaseException]) -> None:
    try:
        for task_id in task_ids:
            _check(AsyncResult(task_id, app=celery_app.app).get(timeout=30))
    except BaseException as error:  # reported by the thread that started this one
        errors.append(error)


def _check(value: object) -> None:
    if value != VALUE:
        raise BenchError(f"a Celery task returned {value!r}, not {VALUE!r}")
