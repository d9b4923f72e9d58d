"""Task submission in batches: their requests, and what the replies say.

A batch closes at ``max_tasks`` tasks or once its known payload bytes reach
``max_bytes``, so that no request grows without bound however many tasks are
submitted. A batch of small in-memory payloads goes as one CreateSmallTasks message,
several times faster than a stream for many tiny tasks; any other batch goes as a
CreateLargeTasks stream, its payloads in chunks of the control plane's chunk size.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from gridpod_api import objects_pb2, submitter_common_pb2
from worker_sdk._data import iter_chunks
from worker_sdk.client._errors import Refusal
from worker_sdk.client._model import SubmittedTask, TaskSpec

__all__ = [
    "Planned",
    "batches",
    "known_size",
    "read_reply",
    "request_messages",
    "small_request",
]

_Request = submitter_common_pb2.CreateLargeTaskRequest
# Well under gRPC's default 4 MiB message limit, which a control plane may keep.
SMALL_REQUEST_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class Planned:
    """A spec ready to send: its place in the submission and its output keys."""

    index: int
    spec: TaskSpec
    outputs: tuple[str, ...]


def batches(
    specs: Iterable[TaskSpec], max_tasks: int, max_bytes: int
) -> Iterator[list[Planned]]:
    """Group ``specs`` into batches, reading them lazily, in order."""
    if max_tasks < 1 or max_bytes < 1:
        raise ValueError(
            f"batches need room for a task: max_tasks={max_tasks}, "
            f"max_bytes={max_bytes}"
        )
    batch: list[Planned] = []
    size = 0
    for index, spec in enumerate(specs):
        if not isinstance(spec, TaskSpec):
            raise TypeError(f"task {index} is a {type(spec).__name__}, not a TaskSpec")
        batch.append(Planned(index, spec, _output_keys(spec)))
        size += known_size(spec)
        if len(batch) >= max_tasks or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _output_keys(spec: TaskSpec) -> tuple[str, ...]:
    """The expected outputs to send: those given, or one new key."""
    return tuple(spec.expected_outputs) or (str(uuid.uuid4()),)


def known_size(spec: TaskSpec) -> int:
    """The payload's size in bytes; 0 for an iterable, whose size is unknown."""
    payload = spec.payload
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, memoryview):
        return payload.nbytes
    if isinstance(payload, (str, os.PathLike)):
        return os.stat(payload).st_size
    return 0


def request_messages(
    session_id: str,
    options: objects_pb2.TaskOptions,
    batch: Sequence[Planned],
    chunk_size: int,
) -> Iterator[submitter_common_pb2.CreateLargeTaskRequest]:
    """The CreateLargeTasks stream of one batch, its closing ``last_task`` included."""
    init = _Request.InitRequest(session_id=session_id, task_options=options)
    yield _Request(init_request=init)
    for planned in batch:
        header = objects_pb2.TaskRequestHeader(
            expected_output_keys=planned.outputs,
            data_dependencies=planned.spec.data_dependencies,
        )
        yield _Request(init_task=objects_pb2.InitTaskRequest(header=header))
        for chunk in iter_chunks(planned.spec.payload, chunk_size):
            yield _Request(task_payload=objects_pb2.DataChunk(data=chunk))
        yield _Request(task_payload=objects_pb2.DataChunk(data_complete=True))
    yield _Request(init_task=objects_pb2.InitTaskRequest(last_task=True))


def small_request(
    session_id: str,
    options: objects_pb2.TaskOptions,
    batch: Sequence[Planned],
    chunk_size: int,
) -> submitter_common_pb2.CreateSmallTaskRequest | None:
    """The batch as one CreateSmallTasks message, or None if it does not fit one.

    It fits when every payload is in memory and no larger than a chunk, and all of
    them together stay under ``SMALL_REQUEST_BYTES``.
    """
    sizes = [known_size(p.spec) for p in batch]
    if max(sizes) > chunk_size or sum(sizes) > SMALL_REQUEST_BYTES:
        return None
    payloads = [_in_memory(p.spec) for p in batch]
    requests = [
        objects_pb2.TaskRequest(
            expected_output_keys=planned.outputs,
            data_dependencies=planned.spec.data_dependencies,
            payload=payload,
        )
        for planned, payload in zip(batch, payloads, strict=True)
        if payload is not None
    ]
    if len(requests) < len(batch):
        return None
    return submitter_common_pb2.CreateSmallTaskRequest(
        session_id=session_id, task_options=options, task_requests=requests
    )


def _in_memory(spec: TaskSpec) -> bytes | None:
    payload = spec.payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    return None


def read_reply(
    reply: submitter_common_pb2.CreateTaskReply, batch: Sequence[Planned]
) -> tuple[list[SubmittedTask], list[Refusal]]:
    """The tasks of ``batch`` that were created, and those that were refused."""
    if reply.WhichOneof("Response") == "error":
        return [], [Refusal(p.index, reply.error) for p in batch]
    statuses = reply.creation_status_list.creation_statuses
    created, refused = [], []
    for planned, status in zip(batch, statuses, strict=False):
        if status.WhichOneof("Status") == "task_info":
            info = status.task_info
            created.append(
                SubmittedTask(
                    info.task_id,
                    tuple(info.expected_output_keys),
                    tuple(info.data_dependencies),
                )
            )
        else:
            reason = status.error or "refused without a reason"
            refused.append(Refusal(planned.index, reason))
    # A reply short of statuses leaves the fate of the missing tasks unknown.
    missing = f"the control plane answered {len(statuses)} of {len(batch)} tasks"
    refused += [Refusal(p.index, missing) for p in batch[len(statuses) :]]
    return created, refused
