"""The client of a control plane: create sessions, submit tasks, read their results.

``Client`` blocks; ``AsyncClient`` is its asyncio twin, with the same methods::

    with Client("localhost:5001") as client:
        session = client.create_session(TaskOptions(options={"kernel": "echo"}))
        tasks = session.submit([TaskSpec(b"hello")])
        session.wait()
        data = session.result(tasks[0].output)
"""

from worker_sdk._model import TaskOptions
from worker_sdk.client._async import AsyncClient, AsyncSession
from worker_sdk.client._errors import (
    AccessDeniedError,
    ClientError,
    ControlPlaneUnavailable,
    InvalidRequestError,
    NotFoundError,
    Refusal,
    ResultAborted,
    ResultNotReady,
    ResultUnavailable,
    SessionCancelledError,
    SubmissionError,
    WaitTimeout,
)
from worker_sdk.client._model import (
    ResultStatus,
    SubmittedTask,
    TaskDetails,
    TaskSpec,
    TaskStatus,
    TaskSummary,
)
from worker_sdk.client._sync import Client, Session

__all__ = [
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
]
