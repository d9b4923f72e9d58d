"""Kernels' calls to the agent: data in, results out, and the agent's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.worker.conftest import Pods
from tests.worker.handlers import pattern
from tests.worker.scripted_agent import DataRequestRecord, TaskSpec


def _reads(*calls: tuple[str, str]) -> bytes:
    return json.dumps([list(call) for call in calls]).encode()


@pytest.mark.parametrize("kernel", ["read", "read-async"])
@pytest.mark.parametrize("first_chunk_in_init", [True, False])
def test_resource_and_common_data_are_read_whole(
    pods: Pods, kernel: str, first_chunk_in_init: bool
) -> None:
    pod = pods.shared("DataReader")
    pod.agent.script.resource_data = {"model": pattern(300_001)}
    pod.agent.script.common_data = {"curve": b"curve-bytes", "blank": b""}
    pod.agent.script.first_data_chunk_in_init = first_chunk_in_init
    pod.agent.script.data_chunk_size = 65_536
    spec = TaskSpec(
        kernel=kernel,
        payload=_reads(("resource", "model"), ("common", "curve"), ("common", "blank")),
    )
    run = pod.run(spec)
    assert run.error is None
    assert run.results == {"out": pattern(300_001) + b"curve-bytes"}
    assert sorted(pod.agent.data_requests, key=lambda r: r.key) == [
        DataRequestRecord("GetCommonData", spec.token, "blank"),
        DataRequestRecord("GetCommonData", spec.token, "curve"),
        DataRequestRecord("GetResourceData", spec.token, "model"),
    ]


@pytest.mark.parametrize("kernel", ["read-probe", "read-probe-async"])
@pytest.mark.parametrize("error_in_init", [True, False])
def test_missing_common_data_raises_an_agent_error_naming_the_key(
    pods: Pods, kernel: str, error_in_init: bool
) -> None:
    pod = pods.shared("DataReader")
    pod.agent.script.data_error_in_init = error_in_init
    run = pod.run(TaskSpec(kernel=kernel, payload=_reads(("common", "absent-key"))))
    # The probe kernel catches AgentError only: anything else fails the task.
    assert run.error is None
    assert "absent-key" in run.results["out"].decode()


def test_missing_data_uncaught_fails_the_task_naming_the_key(pods: Pods) -> None:
    pod = pods.shared("DataReader")
    pod.allow_traceback("absent-key")
    run = pod.run(TaskSpec(kernel="read", payload=_reads(("resource", "absent-key"))))
    assert run.error is not None
    assert "absent-key" in run.error


@pytest.mark.parametrize("kernel", ["read-probe", "read-probe-async"])
def test_direct_data_is_refused_as_an_agent_error(pods: Pods, kernel: str) -> None:
    pod = pods.shared("DataReader")
    run = pod.run(TaskSpec(kernel=kernel, payload=_reads(("direct", "anything"))))
    assert run.error is None
    assert "not supported" in run.results["out"].decode()
    assert [r.method for r in pod.agent.data_requests] == ["GetDirectData"]


@pytest.mark.parametrize("kernel", ["concat", "concat-async"])
def test_refused_result_fails_the_task_with_the_agents_reason(
    pods: Pods, kernel: str
) -> None:
    pod = pods.shared("Toolbox")
    pod.agent.script.refused_results = {"out": "quota exceeded for out"}
    pod.allow_traceback("quota exceeded for out")
    run = pod.run(TaskSpec(kernel=kernel, payload=b"value"))
    assert run.error is not None
    assert "quota exceeded for out" in run.error
    assert run.results == {}


def test_sending_a_key_the_task_does_not_own_raises_an_agent_error(
    pods: Pods,
) -> None:
    spec = TaskSpec(kernel="send-probe", payload=b"stranger", expected_outputs=["rep"])
    run = pods.shared("Streaming").run(spec)
    assert run.error is None
    assert "result 'stranger' is not owned" in run.results["rep"].decode()


def _two_subtasks() -> bytes:
    return json.dumps(
        {"tasks": [{"outputs": ["child-a"]}, {"outputs": ["child-b"]}]}
    ).encode()


def test_create_task_refused_whole_raises_naming_the_refusal(pods: Pods) -> None:
    pod = pods.shared("Delegating")
    pod.agent.script.create_task_error = "session is closing"
    run = pod.run(TaskSpec(kernel="delegate-probe", payload=_two_subtasks()))
    assert run.error is None
    assert "session is closing" in run.results["out"].decode()


def test_create_task_refused_for_one_task_raises_naming_it(pods: Pods) -> None:
    pod = pods.shared("Delegating")
    pod.agent.script.create_task_item_errors = {1: "partition gpu is unknown"}
    run = pod.run(TaskSpec(kernel="delegate-probe", payload=_two_subtasks()))
    assert run.error is None
    assert "partition gpu is unknown" in run.results["out"].decode()


def test_create_task_refusal_uncaught_fails_the_task(pods: Pods) -> None:
    pod = pods.shared("Delegating")
    pod.agent.script.create_task_error = "session is closing"
    pod.allow_traceback("session is closing")
    spec = TaskSpec(
        kernel="delegate", payload=_two_subtasks(), expected_outputs=["child-a"]
    )
    run = pod.run(spec)
    assert run.error is not None
    assert "session is closing" in run.error


@pytest.mark.parametrize("kernel", ["from-file", "from-file-async"])
def test_result_streamed_from_a_file(pods: Pods, kernel: str, tmp_path: Path) -> None:
    source = tmp_path / "result.bin"
    source.write_bytes(pattern(300_001))
    spec = TaskSpec(kernel=kernel, payload=str(source).encode(), chunk_size=65_536)
    run = pods.shared("Streaming").run(spec)
    assert run.error is None
    assert run.results == {"out": pattern(300_001)}
    assert max(run.result_chunk_sizes()) <= 65_536


@pytest.mark.parametrize("kernel", ["from-chunks", "from-chunks-async"])
def test_result_streamed_from_an_iterable_of_chunks(pods: Pods, kernel: str) -> None:
    sizes = [100_000, 0, 5, 70_000]
    spec = TaskSpec(
        kernel=kernel, payload=json.dumps(sizes).encode(), chunk_size=32_768
    )
    run = pods.shared("Streaming").run(spec)
    assert run.error is None
    expected = b"".join(bytes([i]) * size for i, size in enumerate(sizes))
    assert run.results == {"out": expected}
    assert max(run.result_chunk_sizes()) <= 32_768
