"""The public surface of ``worker_sdk``: what a kernel author may import."""

from __future__ import annotations

import worker_sdk
import worker_sdk.testing

PUBLIC = {
    "Address",
    "AgentError",
    "Configuration",
    "CreatedTask",
    "DataUnavailable",
    "KernelNotFound",
    "OutputError",
    "ProtocolError",
    "ResultRefused",
    "Task",
    "TaskCreationRefused",
    "TaskDefinition",
    "TaskHandler",
    "TaskOptions",
    "WorkerConfig",
    "WorkerSdkError",
    "WorkerServer",
    "kernel",
}


def test_public_names_are_exactly_these() -> None:
    assert set(worker_sdk.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(worker_sdk, name) is not None


def test_every_error_derives_from_the_package_base() -> None:
    errors = [
        getattr(worker_sdk, n) for n in PUBLIC if n.endswith(("Error", "Refused"))
    ]
    errors += [worker_sdk.KernelNotFound, worker_sdk.DataUnavailable]
    assert all(issubclass(e, worker_sdk.WorkerSdkError) for e in errors)


def test_testing_helpers_are_public() -> None:
    assert set(worker_sdk.testing.__all__) == {
        "InMemoryAgent",
        "KernelRun",
        "SubmittedTask",
        "run_kernel",
        "run_kernel_async",
    }
