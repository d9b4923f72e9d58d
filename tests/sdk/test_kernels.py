"""Kernel routing, outputs and errors, run through ``worker_sdk.testing``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from worker_sdk import (
    DataUnavailable,
    Task,
    TaskCreationRefused,
    TaskDefinition,
    TaskHandler,
    TaskOptions,
    kernel,
)
from worker_sdk.testing import InMemoryAgent, run_kernel


def _named(name: str) -> TaskOptions:
    return TaskOptions(options={"kernel": name})


class Single(TaskHandler):
    @kernel
    def reverse(self, task: Task) -> bytes:
        return bytes(task.payload)[::-1]


class Grid(TaskHandler):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_session_enter(self, session_id: str) -> None:
        self.events.append(f"enter {session_id}")

    async def on_session_leave(self, session_id: str) -> None:
        self.events.append(f"leave {session_id}")

    @kernel
    def concat(self, task: Task) -> bytes:
        deps = task.data_dependencies
        return bytes(task.payload) + b"".join(bytes(deps[k]) for k in sorted(deps))

    @kernel("async-upper")
    async def upper(self, task: Task) -> bytes:
        return bytes(task.payload).upper()

    @kernel("two-outputs")
    def two_outputs(self, task: Task) -> None:
        task.send_result("a", b"first")
        task.send_result("b", [b"sec", b"ond"])

    @kernel("from-file")
    async def from_file(self, task: Task) -> None:
        await task.send_result(task.expected_outputs[0], bytes(task.payload).decode())

    @kernel("delegate")
    async def delegate(self, task: Task) -> None:
        created = await task.create_tasks(
            [
                TaskDefinition(payload=b"left", expected_outputs=["left"]),
                TaskDefinition(
                    payload=b"join",
                    expected_outputs=[task.expected_outputs[0]],
                    data_dependencies=["left"],
                ),
            ],
            options=_named("concat"),
        )
        assert [c.expected_outputs for c in created] == [
            ("left",),
            (task.expected_outputs[0],),
        ]

    @kernel("boom")
    def boom(self, task: Task) -> bytes:
        raise ValueError("boom")

    @kernel("forgetful")
    def forgetful(self, task: Task) -> None:
        return None

    @kernel("wrong-type")
    def wrong_type(self, task: Task) -> str:
        return "text"

    @kernel("fetch")
    def fetch(self, task: Task) -> bytes:
        resource = task.get_resource_data("model")
        common = task.get_common_data("earlier")
        return bytes(resource) + bytes(common)

    @kernel("fetch-missing")
    async def fetch_missing(self, task: Task) -> bytes:
        return bytes(await task.get_common_data("nowhere"))

    @kernel("where")
    def where(self, task: Task) -> bytes:
        return threading.current_thread().name.encode()


def test_the_only_kernel_runs_without_a_name() -> None:
    run = run_kernel(Single(), b"abc")
    assert run.ok, run.error
    assert (run.kernel, run.result()) == ("reverse", b"cba")


def test_without_a_name_several_kernels_are_listed() -> None:
    run = run_kernel(Grid(), b"abc")
    assert not run.ok
    assert run.error is not None
    assert run.error.startswith("KernelNotFound: the task names no kernel")
    assert "'async-upper', 'boom', 'concat'" in run.error


def test_an_unknown_kernel_is_named() -> None:
    run = run_kernel(Grid(), options=_named("nope"))
    assert run.error is not None
    assert "no kernel named 'nope'" in run.error
    assert run.results == {}


def test_plain_kernels_run_in_a_kernel_thread_and_see_dependencies() -> None:
    assert run_kernel(Grid(), options=_named("where")).result().startswith(b"kernel")
    run = run_kernel(
        Grid(),
        b"p-",
        data_dependencies={"b": b"2", "a": b"1"},
        options=_named("concat"),
    )
    assert run.result("output") == b"p-12"


def test_async_kernels_are_awaited() -> None:
    assert run_kernel(Grid(), b"abc", options=_named("async-upper")).result() == b"ABC"


def test_results_sent_one_by_one_from_bytes_and_chunks() -> None:
    run = run_kernel(Grid(), expected_outputs=["a", "b"], options=_named("two-outputs"))
    assert run.ok, run.error
    assert run.results == {"a": b"first", "b": b"second"}


def test_a_result_sent_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"on disk" * 1000)
    run = run_kernel(
        Grid(), str(path).encode(), options=_named("from-file"), chunk_size=100
    )
    assert run.result() == b"on disk" * 1000


def test_delegating_an_output_to_a_subtask_counts_as_producing_it() -> None:
    run = run_kernel(Grid(), options=_named("delegate"), expected_outputs=["final"])
    assert run.ok, run.error
    assert run.results == {}
    assert [t.payload for t in run.subtasks] == [b"left", b"join"]
    assert run.subtasks[1].expected_outputs == ("final",)
    assert run.subtasks[1].data_dependencies == ("left",)
    assert run.subtasks[0].options == _named("concat")


def test_a_delegated_output_can_no_longer_be_sent() -> None:
    class Both(TaskHandler):
        @kernel
        async def both(self, task: Task) -> bytes:
            await task.create_tasks(
                [TaskDefinition(payload=b"", expected_outputs=["output"])]
            )
            return b"too late"

    run = run_kernel(Both())
    assert run.error is not None
    assert "ResultRefused: the agent refused result 'output'" in run.error


def test_a_raising_kernel_gives_type_and_message() -> None:
    run = run_kernel(Grid(), options=_named("boom"))
    assert run.error == "ValueError: boom"


def test_missing_outputs_are_named() -> None:
    run = run_kernel(Grid(), expected_outputs=["x", "y"], options=_named("forgetful"))
    assert run.error == (
        "OutputError: expected outputs neither sent nor delegated to a subtask: "
        "['x', 'y']"
    )


def test_returning_bytes_needs_exactly_one_expected_output() -> None:
    run = run_kernel(Grid(), expected_outputs=["x", "y"], options=_named("concat"))
    assert run.error is not None
    assert "the task has 2 expected outputs ['x', 'y']" in run.error


def test_returning_something_else_than_bytes_is_an_error() -> None:
    run = run_kernel(Grid(), options=_named("wrong-type"))
    assert run.error is not None
    assert "the kernel returned str" in run.error


def test_resources_and_common_data_come_from_the_agent() -> None:
    agent = InMemoryAgent(resources={"model": b"M"}, common_data={"earlier": b"E"})
    assert run_kernel(Grid(), options=_named("fetch"), agent=agent).result() == b"ME"
    run = run_kernel(Grid(), options=_named("fetch-missing"), agent=agent)
    assert run.error == (
        "DataUnavailable: the agent has no common data 'nowhere': no such key"
    )


def test_a_refused_task_creation_raises_in_the_kernel() -> None:
    agent = InMemoryAgent(refuse_task_creation="session is cancelled")
    run = run_kernel(Grid(), options=_named("delegate"), agent=agent)
    assert run.error == (
        "TaskCreationRefused: the agent refused to create tasks: session is cancelled"
    )
    assert issubclass(TaskCreationRefused, Exception)
    assert issubclass(DataUnavailable, Exception)


def test_session_hooks_frame_the_session() -> None:
    handler = Grid()
    run_kernel(handler, b"x", options=_named("concat"), session_id="s1")
    assert handler.events == ["enter s1", "leave s1"]


def test_duplicate_kernel_names_are_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match="kernel name 'same' is used by both"):

        class Clash(TaskHandler):
            @kernel("same")
            def one(self, task: Task) -> None: ...

            @kernel("same")
            def two(self, task: Task) -> None: ...


def test_kernels_are_inherited() -> None:
    class More(Single):
        @kernel("extra")
        def extra(self, task: Task) -> bytes:
            return b"extra"

    assert More.kernel_names() == ["extra", "reverse"]
    assert run_kernel(More(), b"ab", options=_named("reverse")).result() == b"ba"
