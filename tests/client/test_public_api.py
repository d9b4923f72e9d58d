"""The public surface of ``worker_sdk.client``."""

from __future__ import annotations

import worker_sdk
from worker_sdk import client

PUBLIC = {
    "AccessDeniedError",
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ClientError",
    "ControlPlaneUnavailable",
    "InvalidRequestError",
    "NotFoundError",
    "Refusal",
    "ResultAborted",
    "ResultNotReady",
    "ResultStatus",
    "ResultUnavailable",
    "Session",
    "SessionCancelledError",
    "SubmissionError",
    "SubmittedTask",
    "TaskDetails",
    "TaskOptions",
    "TaskSpec",
    "TaskStatus",
    "TaskSummary",
    "WaitTimeout",
}


def test_public_names_are_exactly_these() -> None:
    assert set(client.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(client, name) is not None


def test_every_error_derives_from_the_client_base() -> None:
    errors = [
        getattr(client, name)
        for name in PUBLIC
        if name.endswith(("Error", "Unavailable", "Aborted", "NotReady", "Timeout"))
    ]
    assert len(errors) == 11
    assert all(issubclass(e, client.ClientError) for e in errors)
    assert issubclass(client.ClientError, worker_sdk.WorkerSdkError)


def test_task_options_are_the_sdk_s_own() -> None:
    assert client.TaskOptions is worker_sdk.TaskOptions
