"""Exceptions of the worker SDK.

WorkerSdkError
 ├── KernelNotFound        no kernel of the task's name, or no name and several kernels
 ├── OutputError           a kernel's outputs do not match the task's expected outputs
 ├── ProtocolError         a Process stream or an agent reply broke the stream grammar
 └── AgentError            the agent refused a request (its in-band error)
      ├── ResultRefused        SendResult answered with an error
      ├── TaskCreationRefused  CreateTask refused the stream or some of its tasks
      └── DataUnavailable      Get*Data has no data for the key
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AgentError",
    "DataUnavailable",
    "KernelNotFound",
    "OutputError",
    "ProtocolError",
    "ResultRefused",
    "TaskCreationRefused",
    "WorkerSdkError",
]


class WorkerSdkError(Exception):
    """Base of every error raised by the worker SDK."""


class KernelNotFound(WorkerSdkError):
    """The task names no kernel of the handler, or several kernels could run it."""


class OutputError(WorkerSdkError):
    """A kernel left an expected output unproduced, or returned what cannot be one."""


class ProtocolError(WorkerSdkError):
    """A stream broke the message grammar of the API."""


class AgentError(WorkerSdkError):
    """The agent answered a request with an in-band error."""


class ResultRefused(AgentError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"the agent refused result {key!r}: {reason}")
        self.key = key
        self.reason = reason


class TaskCreationRefused(AgentError):
    def __init__(self, reasons: Sequence[str], created: Sequence[object] = ()) -> None:
        joined = "; ".join(reasons)
        super().__init__(f"the agent refused to create tasks: {joined}")
        self.reasons = list(reasons)
        # Tasks of the same request that the agent did accept, if any.
        self.created = list(created)


class DataUnavailable(AgentError):
    def __init__(self, kind: str, key: str, reason: str) -> None:
        super().__init__(f"the agent has no {kind} data {key!r}: {reason}")
        self.kind = kind
        self.key = key
        self.reason = reason
