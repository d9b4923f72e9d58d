"""ArmoniK's own published Python package, unchanged, against our Submitter.

The client runs in a subprocess with the ``armonik`` 3.2.1 wheel unpacked on its
path, so that its generated protobuf modules, which register the same proto files as
ours, never share a descriptor pool with them. That release ships generated stubs
only (``armonik.client.submitter_service_pb2_grpc.SubmitterStub``); the higher-level
client came later. This test plays the agent through the backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from agent.backend import Attempt, Backend
from tests.control.submitter_support import (
    AGENT,
    LEASE,
    Grid,
    grid_fixture,  # noqa: F401 - the fixture
)
from tests.wire.reference import fetch_wheel

LARGE = bytes(range(256)) * 4096
PROMPT = 30.0

# What a client of the grid writes with ArmoniK's package; it prints one JSON line
# once its tasks are created, then one with what it read back after they ran.
CLIENT_PROGRAM = """
import hashlib
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc
from armonik.client.submitter_service_pb2_grpc import SubmitterStub
from armonik.common import objects_pb2 as objects
from armonik.common import submitter_common_pb2 as submitter
from google.protobuf.duration_pb2 import Duration

LARGE = bytes(range(256)) * 4096
Large = submitter.CreateLargeTaskRequest


def report(**fields):
    print(json.dumps(fields), flush=True)


def large_task(session_id, options, chunk_size):
    yield Large(init_request=Large.InitRequest(session_id=session_id,
                                               task_options=options))
    header = objects.TaskRequestHeader(expected_output_keys=["large"])
    yield Large(init_task=objects.InitTaskRequest(header=header))
    for start in range(0, len(LARGE), chunk_size):
        chunk = LARGE[start : start + chunk_size]
        yield Large(task_payload=objects.DataChunk(data=chunk))
    yield Large(task_payload=objects.DataChunk(data_complete=True))
    yield Large(init_task=objects.InitTaskRequest(last_task=True))


def read_result(stub, session_id, key):
    request = objects.ResultRequest(session=session_id, result_id=key)
    data = b""
    for reply in stub.TryGetResultStream(request):
        if reply.WhichOneof("type") != "result":
            raise SystemExit(f"result {key}: {reply}")
        if reply.result.WhichOneof("type") == "data_complete":
            return hashlib.sha256(data).hexdigest()
        data += reply.result.data
    raise SystemExit(f"result {key} ended without data_complete")


with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = SubmitterStub(channel)
    chunk_size = stub.GetServiceConfiguration(objects.Empty()).data_chunk_max_size
    options = objects.TaskOptions(
        max_duration=Duration(seconds=300), max_retries=1, priority=1,
        options={"kernel": "echo"},
    )
    session_id = stub.CreateSession(
        submitter.CreateSessionRequest(default_task_option=options)
    ).session_id
    small = stub.CreateSmallTasks(submitter.CreateSmallTaskRequest(
        session_id=session_id,
        task_options=objects.TaskOptions(priority=2),
        task_requests=[
            objects.TaskRequest(expected_output_keys=["small-1"], payload=b"one"),
            objects.TaskRequest(expected_output_keys=["small-2"],
                                data_dependencies=["small-1"], payload=b"two"),
        ],
    ))
    large = stub.CreateLargeTasks(large_task(session_id, options, chunk_size))
    created = [
        status.task_info.task_id
        for reply in (small, large)
        for status in reply.creation_status_list.creation_statuses
    ]
    report(session_id=session_id, created=created)
    session = submitter.TaskFilter.IdsRequest(ids=[session_id])
    counts = stub.WaitForCompletion(
        submitter.WaitRequest(filter=submitter.TaskFilter(session=session))
    )
    statuses = stub.GetTaskStatus(submitter.GetTaskStatusRequest(task_ids=created))
    outputs = [
        stub.TryGetTaskOutput(objects.TaskOutputRequest(session=session_id,
                                                        task_id=task_id))
        for task_id in created
    ]
    report(
        counts={value.status: value.count for value in counts.values},
        statuses=[status.status for status in statuses.id_statuses],
        outputs=[output.WhichOneof("type") for output in outputs],
        results={key: read_result(stub, session_id, key)
                 for key in ("small-1", "small-2", "large")},
    )
"""


def unpacked(wheel: Path, folder: Path) -> Path:
    # ``armonik`` is a namespace package, which zipimport cannot load.
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    return folder


async def run_as_agent(backend: Backend, count: int) -> list[Attempt]:
    """Run ``count`` tasks: a small payload comes back upper-cased, a large one as
    it is."""
    attempts: list[Attempt] = []
    while len(attempts) < count:
        attempt = await backend.acquire(AGENT, "", LEASE, payload_up_to=1024)
        if attempt is None:
            await asyncio.sleep(0.01)
            continue
        await backend.start(attempt)
        [key] = attempt.task.expected_outputs
        if attempt.payload_data is None:
            await backend.stage_result(attempt, key, attempt.task.payload)
            await backend.complete(attempt)
        else:
            await backend.complete(attempt, {key: attempt.payload_data.upper()})
        attempts.append(attempt)
    return attempts


async def report(stream: asyncio.StreamReader | None) -> Any:
    assert stream is not None
    line = await asyncio.wait_for(stream.readline(), PROMPT)
    assert line, "the client ended without reporting"
    return json.loads(line)


async def test_armonik_client_submits_waits_and_reads_results(
    grid: Grid, tmp_path: Path
) -> None:
    armonik = unpacked(fetch_wheel("3.2.1"), tmp_path / "armonik-3.2.1")
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT_PROGRAM,
        str(armonik),
        grid.address,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        created = await report(client.stdout)
        assert len(created["created"]) == 3
        attempts = await run_as_agent(grid.backend, 3)
        done = await report(client.stdout)
        await asyncio.wait_for(client.wait(), PROMPT)
    finally:
        if client.returncode is None:
            client.kill()
        errors = await client.stderr.read() if client.stderr else b""
        await client.wait()
    assert client.returncode == 0, errors.decode()
    assert {a.task.task_id for a in attempts} == set(created["created"])
    assert attempts[0].task.options.priority == 2
    assert attempts[0].task.options.max_retries == 1
    assert done["counts"] == {"4": 3}  # every task COMPLETED
    assert done["statuses"] == [4, 4, 4]
    assert done["outputs"] == ["ok", "ok", "ok"]
    assert done["results"] == {
        "small-1": hashlib.sha256(b"ONE").hexdigest(),
        "small-2": hashlib.sha256(b"TWO").hexdigest(),
        "large": hashlib.sha256(LARGE).hexdigest(),
    }
