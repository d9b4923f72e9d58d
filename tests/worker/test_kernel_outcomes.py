"""What a kernel does or fails to do becomes the task's output: ok or error details."""

from __future__ import annotations

import json

import pytest

from tests.worker.conftest import Pods
from tests.worker.scripted_agent import TaskSpec, traceback_endings

TOOLBOX_KERNELS = [
    "big",
    "concat",
    "concat-async",
    "describe",
    "describe-async",
    "send-listed",
    "send-listed-async",
    "silent",
]


@pytest.mark.parametrize("kernel", ["boom", "boom-async"])
def test_kernel_exception_gives_its_type_and_message(pods: Pods, kernel: str) -> None:
    pod = pods.shared("Failing")
    pod.allow_traceback("ValueError: boom")
    run = pod.run(TaskSpec(kernel=kernel))
    assert run.error == "ValueError: boom"
    assert run.results == {}
    # The traceback is for the operator, in the log, not in the reply.
    endings = traceback_endings(pod.log())
    assert any(line.startswith("ValueError: boom") for line in endings), endings


def test_kernel_exception_after_sending_is_still_an_error(pods: Pods) -> None:
    pod = pods.shared("Failing")
    pod.allow_traceback("RuntimeError: failed after sending")
    run = pod.run(TaskSpec(kernel="boom-after-send"))
    assert run.error == "RuntimeError: failed after sending"


def test_the_worker_keeps_serving_after_kernel_errors(pods: Pods) -> None:
    pod = pods.shared("Failing")
    pod.allow_traceback("ValueError: boom")
    errors = [pod.run(TaskSpec(kernel="boom")).error for _ in range(3)]
    assert errors == ["ValueError: boom"] * 3
    assert pods.shared("Toolbox").run(TaskSpec(kernel="concat")).ok


@pytest.mark.parametrize("kernel", ["no-such-kernel", None])
def test_unknown_or_unnamed_kernel_lists_the_kernels(
    pods: Pods, kernel: str | None
) -> None:
    run = pods.shared("Toolbox").run(TaskSpec(kernel=kernel))
    assert run.error is not None
    for name in TOOLBOX_KERNELS:
        assert name in run.error, (name, run.error)
    if kernel is not None:
        assert kernel in run.error
    assert run.results == {}


@pytest.mark.parametrize("kernel", [None, "echo"])
def test_a_single_kernel_runs_unnamed_or_named(pods: Pods, kernel: str | None) -> None:
    run = pods.shared("Single").run(TaskSpec(payload=b"solo", kernel=kernel))
    assert run.error is None
    assert run.results == {"out": b"solo"}


def test_a_single_kernel_handler_still_refuses_another_name(pods: Pods) -> None:
    run = pods.shared("Single").run(TaskSpec(kernel="price"))
    assert run.error is not None
    assert "price" in run.error
    assert "echo" in run.error


def test_kernel_sending_nothing_names_every_missing_output(pods: Pods) -> None:
    spec = TaskSpec(kernel="silent", expected_outputs=["alpha-key", "beta-key"])
    run = pods.shared("Toolbox").run(spec)
    assert run.error is not None
    assert "alpha-key" in run.error
    assert "beta-key" in run.error


@pytest.mark.parametrize("kernel", ["send-listed", "send-listed-async"])
def test_missing_output_is_named_and_sent_ones_are_not(pods: Pods, kernel: str) -> None:
    spec = TaskSpec(
        kernel=kernel,
        payload=json.dumps(["alpha-key"]).encode(),
        expected_outputs=["alpha-key", "beta-key"],
    )
    run = pods.shared("Toolbox").run(spec)
    assert run.error is not None
    assert "beta-key" in run.error
    assert "alpha-key" not in run.error
    assert run.results == {"alpha-key": b"alpha-key"}


@pytest.mark.parametrize("kernel", ["send-listed", "send-listed-async"])
def test_kernel_sending_every_output_succeeds(pods: Pods, kernel: str) -> None:
    outputs = ["first", "second", "third"]
    spec = TaskSpec(
        kernel=kernel, payload=json.dumps(outputs).encode(), expected_outputs=outputs
    )
    run = pods.shared("Toolbox").run(spec)
    assert run.error is None
    assert run.results == {key: key.encode() for key in outputs}


@pytest.mark.parametrize("outputs", [["one", "two"], []])
def test_returning_bytes_needs_exactly_one_expected_output(
    pods: Pods, outputs: list[str]
) -> None:
    spec = TaskSpec(kernel="concat", payload=b"value", expected_outputs=outputs)
    run = pods.shared("Toolbox").run(spec)
    assert run.error is not None
    assert run.results == {}
    assert all(stream.results == {} for stream in run.result_streams)


def test_tree_sum_delegates_its_output(pods: Pods) -> None:
    run = pods.shared("Delegating").run(TaskSpec(kernel="tree-sum"))
    assert run.error is None
    assert run.results == {}
    [call] = run.creations
    assert call.error is None
    assert call.task_options is not None
    assert dict(call.task_options.options) == {"kernel": "price"}
    [task] = call.tasks
    assert task.expected_output_keys == ["out"]
    assert task.payload == b"leaf"
    assert task.task_id


def _delegation(*, delegated: str = "out") -> bytes:
    return json.dumps(
        {
            "tasks": [
                {
                    "payload": "abc",
                    "repeat": 70_000,
                    "outputs": [delegated],
                    "dependencies": ["curve", "spot"],
                },
                {"payload": "", "outputs": ["fresh-output"]},
            ],
            "options": {
                "options": {"kernel": "price"},
                "max_duration": 30,
                "max_retries": 2,
                "priority": 3,
                "partition_id": "gpu",
            },
        }
    ).encode()


@pytest.mark.parametrize("kernel", ["delegate", "delegate-async"])
def test_subtasks_are_created_with_options_headers_and_payloads(
    pods: Pods, kernel: str
) -> None:
    spec = TaskSpec(kernel=kernel, payload=_delegation(), chunk_size=50_000)
    run = pods.shared("Delegating").run(spec)
    assert run.error is None
    [call] = run.creations
    assert call.token == spec.token
    options = call.task_options
    assert options is not None
    assert dict(options.options) == {"kernel": "price"}
    assert options.max_duration.ToSeconds() == 30
    assert (options.max_retries, options.priority) == (2, 3)
    assert options.partition_id == "gpu"
    first, second = call.tasks
    assert first.expected_output_keys == ["out"]
    assert first.data_dependencies == ["curve", "spot"]
    assert first.payload == b"abc" * 70_000
    assert second.expected_output_keys == ["fresh-output"]
    assert second.data_dependencies == []
    assert second.payload == b""


def test_outputs_neither_sent_nor_delegated_are_named(pods: Pods) -> None:
    spec = TaskSpec(
        kernel="delegate",
        payload=_delegation(delegated="out"),
        expected_outputs=["out", "kept-output"],
    )
    run = pods.shared("Delegating").run(spec)
    assert run.error is not None
    assert "kept-output" in run.error
    assert "'out'" not in run.error
