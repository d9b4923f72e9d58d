"""What a kernel author imports to write, test and run an ArmoniK worker."""

# First, so that gRPC loads with the settings it sets.
from worker_sdk import _grpc_defaults  # noqa: F401
from worker_sdk._address import Address
from worker_sdk._errors import (
    AgentError,
    DataUnavailable,
    KernelNotFound,
    OutputError,
    ProtocolError,
    ResultRefused,
    TaskCreationRefused,
    WorkerSdkError,
)
from worker_sdk._handler import TaskHandler, kernel
from worker_sdk._model import Configuration, CreatedTask, TaskDefinition, TaskOptions
from worker_sdk._server import WorkerConfig, WorkerServer
from worker_sdk._task import Task

__all__ = [
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
]
