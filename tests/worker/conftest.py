"""Worker pods for the tests: one shared per handler class, or a fresh one per test.

Starting a worker costs a Python start-up, so tests that leave a worker as they found
it share one per handler; each such test still gets a reset agent, and the worker's
log is checked for unexpected tracebacks over that test's span only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.worker.scripted_agent import Pod, running_pod, short_tempdir

HANDLERS = "tests.worker.handlers"


def _dead(pod: Pod, name: str) -> str | None:
    code = pod.worker.returncode
    if code is None:
        return None
    return f"the worker serving {name} exited with code {code}:\n{pod.worker.log()}"


class _SharedPods:
    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._pods: dict[str, Pod] = {}

    def get(self, handler: str) -> Pod:
        pod = self._pods.get(handler)
        # A worker that died in an earlier test is replaced, so that one crash shows
        # up once rather than in every later test.
        if pod is None or pod.worker.returncode is not None:
            workdir = self._stack.enter_context(short_tempdir())
            pod = self._stack.enter_context(
                running_pod(f"{HANDLERS}:{handler}", workdir)
            )
            self._pods[handler] = pod
        return pod

    def close(self) -> list[str]:
        problems = []
        for name, pod in self._pods.items():
            code = pod.worker.terminate()
            if code != 0:
                problems.append(f"the worker serving {name} exited with code {code}")
            problems += pod.problems()
        return problems


class Pods:
    """The pods one test uses; checked and reset when the test ends."""

    def __init__(self, shared: _SharedPods, stack: ExitStack) -> None:
        self._shared = shared
        self._stack = stack
        self._used: dict[str, Pod] = {}
        self._fresh: list[tuple[str, Pod]] = []

    def shared(self, handler: str) -> Pod:
        """The session's pod serving ``handler``, a class of the handlers module."""
        pod = self._shared.get(handler)
        if handler not in self._used:
            pod.reset()
            self._used[handler] = pod
        return pod

    def workdir(self) -> Path:
        """A short-named directory removed when the test ends."""
        return self._stack.enter_context(short_tempdir())

    def fresh(
        self, handler: str, *, workdir: Path | None = None, **options: Any
    ) -> Pod:
        """A pod of this test's own, stopped by SIGTERM when the test ends."""
        workdir = workdir or self.workdir()
        pod = self._stack.enter_context(
            running_pod(f"{HANDLERS}:{handler}", workdir, **options)
        )
        self._fresh.append((handler, pod))
        return pod

    def finish(self) -> list[str]:
        problems = []
        for name, pod in self._used.items():
            dead = _dead(pod, name)
            problems += [dead] if dead else pod.problems()
            pod.reset()
        for name, pod in self._fresh:
            code = pod.worker.terminate()
            if code != 0:
                problems.append(
                    f"the worker serving {name} exited with code {code} on SIGTERM:\n"
                    f"{pod.worker.log()}"
                )
            problems += pod.problems()
        return problems


@pytest.fixture(scope="session")
def shared_pods() -> Iterator[_SharedPods]:
    with ExitStack() as stack:
        pods = _SharedPods(stack)
        yield pods
        problems = pods.close()
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture
def pods(shared_pods: _SharedPods) -> Iterator[Pods]:
    with ExitStack() as stack:
        pods = Pods(shared_pods, stack)
        yield pods
        problems = pods.finish()
    if problems:
        pytest.fail("\n\n".join(problems))
