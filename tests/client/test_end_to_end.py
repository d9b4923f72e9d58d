"""A real pod (``agent run`` and an SDK worker) runs tasks submitted by ``Client``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.agent.conftest import Pod
from tests.client.support import PlaneThread, short_tempdir
from worker_sdk.client import (
    Client,
    ResultAborted,
    SubmissionError,
    TaskOptions,
    TaskSpec,
    TaskStatus,
)


@dataclass
class Cluster:
    plane: PlaneThread
    pod: Pod


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One control plane and one pod over a shared SQLite file, for the module."""
    with short_tempdir() as folder:
        plane = PlaneThread(folder)
        (folder / "pod").mkdir()
        pod = Pod("pod", folder / "pod", f"sqlite://{plane.database}")
        try:
            pod.start_worker()
            pod.start_agent()
            pod.wait_ready()
            yield Cluster(plane, pod)
        finally:
            pod.stop()
            plane.close()


def _kernel(name: str) -> TaskOptions:
    return TaskOptions(options={"kernel": name})


def test_a_pod_runs_what_the_client_submits(cluster: Cluster) -> None:
    with Client(cluster.plane.address) as client:
        session = client.create_session(_kernel("echo"))
        specs = [TaskSpec(f"payload {i}".encode()) for i in range(30)]
        specs.append(TaskSpec(b"tail", data_dependencies=["first"]))
        specs.insert(0, TaskSpec(b"head", expected_outputs=["first"]))
        tasks = session.submit(specs, batch_size=8)
        failed = session.submit([TaskSpec(b"x")], _kernel("always-fail"))
        counts = session.wait(timeout=30)
        assert counts == {TaskStatus.COMPLETED: 32, TaskStatus.ERROR: 1}, (
            cluster.pod.logs()
        )
        assert session.result("first") == b"head"
        assert [session.result(t.output) for t in tasks[1:31]] == [
            f"payload {i}".encode() for i in range(30)
        ]
        with pytest.raises(ResultAborted, match="fails"):
            session.result(failed[0].output)
        with pytest.raises(SubmissionError, match="first"):
            session.submit([TaskSpec(b"again", expected_outputs=["first"])])


def test_a_pod_echoes_a_payload_of_several_mebibytes(cluster: Cluster) -> None:
    payload = bytes(range(256)) * (8 * 1024)  # 2 MiB, under the agent's prefetch
    with Client(cluster.plane.address) as client:
        session = client.create_session(_kernel("echo"))
        [task] = session.submit([TaskSpec(payload)])
        session.wait(timeout=30)
        assert session.result(task.output) == payload
