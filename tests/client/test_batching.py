"""How a submission is cut into CreateLargeTasks streams, and how replies are read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gridpod_api import objects_pb2, submitter_common_pb2
from worker_sdk.client import Refusal, SubmittedTask, TaskSpec
from worker_sdk.client._submit import Planned, batches, read_reply, request_messages

_Reply = submitter_common_pb2.CreateTaskReply


def _sizes(specs: list[TaskSpec], max_tasks: int, max_bytes: int) -> list[int]:
    return [len(batch) for batch in batches(specs, max_tasks, max_bytes)]


def test_batches_close_at_the_task_count() -> None:
    specs = [TaskSpec(b"x") for _ in range(2_500)]
    assert _sizes(specs, 1_000, 1 << 30) == [1_000, 1_000, 500]


def test_batches_close_once_their_payloads_reach_the_byte_budget() -> None:
    specs = [TaskSpec(b"x" * 400) for _ in range(10)]
    # 400 + 400 + 400 reaches 1,000: a batch may pass the budget by one payload.
    assert _sizes(specs, 100, 1_000) == [3, 3, 3, 1]


def test_a_file_payload_counts_its_size_and_an_iterable_counts_nothing(
    tmp_path: Path,
) -> None:
    big = tmp_path / "payload.bin"
    big.write_bytes(b"y" * 5_000)
    specs = [TaskSpec(iter([b"z" * 5_000])), TaskSpec(big), TaskSpec(b"a")]
    assert _sizes(specs, 100, 1_000) == [2, 1]


def test_batches_read_the_specs_lazily() -> None:
    produced = []

    def specs() -> Iterator[TaskSpec]:
        for index in range(5):
            produced.append(index)
            yield TaskSpec(b"x")

    first = next(batches(specs(), 2, 1 << 20))
    assert len(first) == 2
    assert produced == [0, 1]


def test_a_spec_without_outputs_gets_one_fresh_key_and_given_ones_are_kept() -> None:
    planned = [p for batch in batches([TaskSpec(), TaskSpec()], 10, 10) for p in batch]
    [first], [second] = planned[0].outputs, planned[1].outputs
    assert first != second
    given = next(batches([TaskSpec(expected_outputs=["a", "b"])], 10, 10))
    assert given[0].outputs == ("a", "b")


def test_a_string_of_keys_is_refused() -> None:
    with pytest.raises(TypeError, match="list of keys"):
        TaskSpec(expected_outputs="out")


def test_what_is_not_a_spec_is_refused_naming_its_place() -> None:
    with pytest.raises(TypeError, match="task 1 is a bytes"):
        list(batches([TaskSpec(), b"payload"], 10, 10))  # type: ignore[list-item]


def test_the_stream_follows_the_grammar_with_payloads_in_chunks() -> None:
    batch = [
        Planned(0, TaskSpec(b"abcdefgh", data_dependencies=["d"]), ("o1",)),
        Planned(1, TaskSpec(b""), ("o2",)),
    ]
    options = objects_pb2.TaskOptions(priority=3)
    messages = list(request_messages("s1", options, batch, 3))
    kinds = [_kind(m) for m in messages]
    assert kinds == [
        "init_request",
        "init_task.header",
        "task_payload.data",
        "task_payload.data",
        "task_payload.data",
        "task_payload.data_complete",
        "init_task.header",
        "task_payload.data_complete",
        "init_task.last_task",
    ]
    assert messages[0].init_request.session_id == "s1"
    assert messages[0].init_request.task_options.priority == 3
    assert list(messages[1].init_task.header.data_dependencies) == ["d"]
    assert b"".join(m.task_payload.data for m in messages[2:5]) == b"abcdefgh"


def _kind(message: submitter_common_pb2.CreateLargeTaskRequest) -> str:
    kind = message.WhichOneof("type")
    assert kind is not None
    if kind == "init_request":
        return kind
    return f"{kind}.{getattr(message, kind).WhichOneof('type')}"


def _planned(count: int, first: int = 0) -> list[Planned]:
    return [Planned(first + i, TaskSpec(), (f"k{i}",)) for i in range(count)]


def test_a_reply_yields_created_tasks_and_refusals_at_their_place() -> None:
    info = _Reply.TaskInfo(task_id="t0", expected_output_keys=["k0"])
    reply = _Reply(
        creation_status_list=_Reply.CreationStatusList(
            creation_statuses=[
                _Reply.CreationStatus(task_info=info),
                _Reply.CreationStatus(error="key k1 exists"),
            ]
        )
    )
    created, refused = read_reply(reply, _planned(2, first=10))
    assert created == [SubmittedTask("t0", ("k0",))]
    assert refused == [Refusal(11, "key k1 exists")]


def test_a_reply_short_of_statuses_refuses_the_tasks_left_unanswered() -> None:
    info = _Reply.TaskInfo(task_id="t0", expected_output_keys=["k0"])
    reply = _Reply(
        creation_status_list=_Reply.CreationStatusList(
            creation_statuses=[_Reply.CreationStatus(task_info=info)]
        )
    )
    created, refused = read_reply(reply, _planned(3))
    assert [t.task_id for t in created] == ["t0"]
    assert [r.index for r in refused] == [1, 2]
    assert "answered 1 of 3 tasks" in refused[0].reason


def test_a_whole_request_error_refuses_every_task_of_the_batch() -> None:
    created, refused = read_reply(_Reply(error="no room"), _planned(2))
    assert created == []
    assert refused == [Refusal(0, "no room"), Refusal(1, "no room")]
