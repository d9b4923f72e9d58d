"""How backend errors and bad requests reach a client: one gRPC status each."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

from agent.backend import BackendError, NotFound, SessionCancelled

__all__ = ["RequestRefused", "abort", "backend_errors", "invalid"]


class RequestRefused(Exception):
    """A request the control plane will not serve, with the status to answer."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def invalid(details: str) -> NoReturn:
    """Refuse a malformed request: INVALID_ARGUMENT naming what is wrong."""
    raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, details)


@contextlib.contextmanager
def backend_errors() -> Iterator[None]:
    """Turn the backend's errors into refusals with the matching status."""
    try:
        yield
    except NotFound as error:
        raise RequestRefused(grpc.StatusCode.NOT_FOUND, str(error)) from error
    except SessionCancelled as error:
        raise RequestRefused(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from error
    except BackendError as error:
        raise RequestRefused(grpc.StatusCode.INTERNAL, str(error)) from error


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], refused: RequestRefused
) -> NoReturn:
    await context.abort(refused.code, refused.details)
    raise AssertionError("abort returns only by raising")  # pragma: no cover
