"""Exceptions of the control plane client, and the conversion of gRPC errors to them.

WorkerSdkError
 └── ClientError                  a call to the control plane failed
      ├── NotFoundError              unknown session, task or result (NOT_FOUND)
      ├── AccessDeniedError          no user named, or a permission lacking
      │                              (UNAUTHENTICATED, PERMISSION_DENIED)
      ├── InvalidRequestError        the request was malformed (INVALID_ARGUMENT)
      ├── SessionCancelledError      the session is cancelled (FAILED_PRECONDITION)
      ├── ControlPlaneUnavailable    unreachable or silent; also a ConnectionError
      ├── WaitTimeout                a wait outlasted its timeout; also a TimeoutError
      ├── SubmissionError            some tasks were refused, the others were created
      └── ResultUnavailable          a result has no data to give
           ├── ResultNotReady           its task has not completed yet
           └── ResultAborted            its task failed or was cancelled
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from worker_sdk._errors import WorkerSdkError

if TYPE_CHECKING:
    from worker_sdk.client._model import SubmittedTask

__all__ = [
    "AccessDeniedError",
    "ClientError",
    "ControlPlaneUnavailable",
    "InvalidRequestError",
    "NotFoundError",
    "Refusal",
    "ResultAborted",
    "ResultNotReady",
    "ResultUnavailable",
    "SessionCancelledError",
    "SubmissionError",
    "WaitTimeout",
    "converted",
    "from_rpc_error",
]


class ClientError(WorkerSdkError):
    """A call to the control plane failed; ``code`` is its gRPC status, if any."""

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, details: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class NotFoundError(ClientError):
    """The control plane knows no session, task or result of that id."""


class AccessDeniedError(ClientError):
    """The control plane refused the caller: its certificate names no user, or
    the user lacks the permission the call needs (the details name it)."""


class InvalidRequestError(ClientError):
    """The control plane found the request malformed."""


class SessionCancelledError(ClientError):
    """The session is cancelled: it takes no new task and runs none."""


class ControlPlaneUnavailable(ClientError, ConnectionError):
    """The control plane could not be reached, or did not answer in time."""


class WaitTimeout(ClientError, TimeoutError):
    """A wait did not end within the timeout it was given."""


@dataclass(frozen=True)
class Refusal:
    """A task the control plane did not create: its place in the submission, why."""

    index: int
    reason: str


class SubmissionError(ClientError):
    """Some tasks of a submission were refused; every other one was created.

    The created tasks run as usual: ``submitted`` lists them, for the caller to wait
    for or cancel.
    """

    def __init__(
        self, refusals: Sequence[Refusal], submitted: Sequence[SubmittedTask]
    ) -> None:
        shown = "; ".join(f"task {r.index}: {r.reason}" for r in refusals[:10])
        more = f"; and {len(refusals) - 10} more" if len(refusals) > 10 else ""
        super().__init__(
            f"the control plane refused {len(refusals)} of "
            f"{len(refusals) + len(submitted)} tasks ({shown}{more}); "
            f"the {len(submitted)} others were created"
        )
        self.refusals = list(refusals)
        self.submitted = list(submitted)


class ResultUnavailable(ClientError):
    """A result has no data to give."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class ResultNotReady(ResultUnavailable):
    """The task that is to produce the result has not completed yet."""

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(
            f"result {key!r} is not completed yet: its task {task_id} has not "
            "finished; wait for it first",
            key,
        )
        self.task_id = task_id


class ResultAborted(ResultUnavailable):
    """The task that was to produce the result failed or was cancelled."""

    def __init__(self, key: str, task_id: str, errors: Sequence[str]) -> None:
        reasons = "; ".join(errors) or "no error message"
        super().__init__(
            f"result {key!r} was aborted: its task {task_id} failed: {reasons}", key
        )
        self.task_id = task_id
        self.errors = list(errors)


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: AccessDeniedError,
    grpc.StatusCode.PERMISSION_DENIED: AccessDeniedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: SessionCancelledError,
    grpc.StatusCode.UNAVAILABLE: ControlPlaneUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: ControlPlaneUnavailable,
}


def from_rpc_error(error: grpc.aio.AioRpcError, doing: str) -> ClientError:
    """The client's exception for ``error``, raised while ``doing`` something."""
    code = error.code()
    details = error.details() or "no details"
    kind = _BY_CODE.get(code, ClientError)
    return kind(f"{doing}: {details} ({code.name})", code, details)


@contextlib.contextmanager
def converted(doing: str) -> Iterator[None]:
    """Raise the client's exception in place of a gRPC error, naming ``doing``."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, doing) from error
