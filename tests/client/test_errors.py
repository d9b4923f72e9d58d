"""gRPC errors of the control plane, as the client's exceptions."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.client.support import silent_listener, unused_address
from worker_sdk import WorkerSdkError
from worker_sdk.client import (
    AsyncClient,
    AsyncSession,
    ClientError,
    ControlPlaneUnavailable,
    InvalidRequestError,
    NotFoundError,
    SessionCancelledError,
    TaskSpec,
)
from worker_sdk.client._errors import from_rpc_error


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, SessionCancelledError),
        (grpc.StatusCode.UNAVAILABLE, ControlPlaneUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ControlPlaneUnavailable),
        (grpc.StatusCode.INTERNAL, ClientError),
        (grpc.StatusCode.UNIMPLEMENTED, ClientError),
    ],
)
def test_each_status_code_has_its_exception(
    code: grpc.StatusCode, kind: type[ClientError]
) -> None:
    rpc_error = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="the details"
    )
    error = from_rpc_error(rpc_error, "doing the thing")
    assert type(error) is kind
    assert isinstance(error, WorkerSdkError)
    assert str(error) == f"doing the thing: the details ({code.name})"
    assert (error.code, error.details) == (code, "the details")


def test_an_unavailable_control_plane_is_also_a_connection_error() -> None:
    assert issubclass(ControlPlaneUnavailable, ConnectionError)


async def test_an_unknown_session_is_not_found(async_client: AsyncClient) -> None:
    with pytest.raises(NotFoundError, match=r"opening session nosuch: .*nosuch"):
        await async_client.open_session("nosuch")


async def test_submitting_to_an_unknown_session_is_not_found(
    async_client: AsyncClient, session: AsyncSession
) -> None:
    ghost = AsyncSession(session._connection, "ghost")
    with pytest.raises(NotFoundError, match="submitting tasks 0 to 0 to session ghost"):
        await ghost.submit([TaskSpec(b"x")])


async def test_a_malformed_request_is_invalid(session: AsyncSession) -> None:
    # An empty key reaches the control plane, which names what is wrong.
    with pytest.raises(InvalidRequestError, match="reading result '' of session"):
        await session.result("")


async def test_submitting_to_a_cancelled_session_says_so(
    session: AsyncSession,
) -> None:
    await session.cancel()
    with pytest.raises(SessionCancelledError, match="is cancelled"):
        await session.submit([TaskSpec(b"x")])


async def test_nothing_listening_is_unavailable() -> None:
    async with AsyncClient(unused_address(), call_timeout=5) as client:
        with pytest.raises(ControlPlaneUnavailable, match="creating a session on"):
            await client.create_session()


async def test_a_silent_server_is_unavailable_once_the_call_timeout_passes() -> None:
    with silent_listener() as address:
        async with AsyncClient(address, call_timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(ControlPlaneUnavailable, match="DEADLINE_EXCEEDED"):
                await client.create_session()
            assert time.monotonic() - started < 3


def test_a_bad_address_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="is not an address"):
        AsyncClient("nowhere")
