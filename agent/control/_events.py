"""The Events service: a session's task and result events, as they happen.

A subscription sees what is committed after it is in place, which the response
headers mark: a client that waits for them before changing anything misses
nothing. Events come in the order the backend committed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc

from agent.backend import (
    Backend,
    BackendError,
    Event,
    EventKind,
    EventsExpired,
    ResultStatus,
    Subscription,
    TaskStatus,
    Topic,
)
from agent.control._access import Access
from agent.control._config import ControlPlaneConfig
from agent.control._limits import OpenStreams
from agent.control._requests import Context, required_id
from agent.control._status import RequestRefused, abort, backend_errors
from agent.control._visibility import ScopedService
from gridpod_api import (
    events_common_pb2,
    events_service_pb2_grpc,
    result_status_pb2,
    task_status_pb2,
)

__all__ = ["EventsService"]

logger = logging.getLogger(__name__)

_Response = events_common_pb2.EventSubscriptionResponse

# Events read at once; a full batch is followed by another read without waiting.
_BATCH = 1000


def _task_status(status: TaskStatus | None) -> task_status_pb2.TaskStatus.ValueType:
    return task_status_pb2.TaskStatus.ValueType(status or 0)


def _result_status(
    status: ResultStatus | None,
) -> result_status_pb2.ResultStatus.ValueType:
    return result_status_pb2.ResultStatus.ValueType(status or 0)


def _new_task(event: Event) -> _Response:
    return _Response(
        session_id=event.session_id,
        new_task=_Response.NewTask(
            task_id=event.task_id,
            payload_id=event.payload_id,
            origin_task_id=event.origin_task_id,
            status=_task_status(event.status),
            expected_output_keys=event.expected_outputs,
            data_dependencies=event.data_dependencies,
            retry_of_ids=event.retry_of_ids,
        ),
    )


def _task_status_update(event: Event) -> _Response:
    return _Response(
        session_id=event.session_id,
        task_status_update=_Response.TaskStatusUpdate(
            task_id=event.task_id, status=_task_status(event.status)
        ),
    )


def _new_result(event: Event) -> _Response:
    return _Response(
        session_id=event.session_id,
        new_result=_Response.NewResult(
            result_id=event.key,
            owner_id=event.owner_task_id,
            status=_result_status(event.result_status),
        ),
    )


def _result_status_update(event: Event) -> _Response:
    return _Response(
        session_id=event.session_id,
        result_status_update=_Response.ResultStatusUpdate(
            result_id=event.key, status=_result_status(event.result_status)
        ),
    )


def _result_owner_update(event: Event) -> _Response:
    return _Response(
        session_id=event.session_id,
        result_owner_update=_Response.ResultOwnerUpdate(
            result_id=event.key,
            previous_owner_id=event.previous_owner_task_id,
            current_owner_id=event.owner_task_id,
        ),
    )


_RESPONSES: dict[EventKind, Callable[[Event], _Response]] = {
    EventKind.NEW_TASK: _new_task,
    EventKind.TASK_STATUS: _task_status_update,
    EventKind.NEW_RESULT: _new_result,
    EventKind.RESULT_STATUS: _result_status_update,
    EventKind.RESULT_OWNER: _result_owner_update,
}


def response(event: Event) -> _Response:
    """The message a subscriber receives for ``event``."""
    return _RESPONSES[event.kind](event)


class EventsService(ScopedService, events_service_pb2_grpc.EventsServicer):
    """Streams every event of a session until the client cancels or ``close()``;
    a caller follows only the sessions it sees."""

    def __init__(
        self,
        backend: Backend,
        config: ControlPlaneConfig,
        streams: OpenStreams | None = None,
        access: Access | None = None,
    ) -> None:
        super().__init__(backend, config, access)
        self._streams = streams or OpenStreams(config)
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End every stream, as the server is stopping, with an OK status."""
        self._closing.set()

    async def GetEvents(
        self, request: events_common_pb2.EventSubscriptionRequest, context: Context
    ) -> AsyncIterator[_Response]:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._streams.held(context))
            except RequestRefused as refused:
                await abort(context, refused)
            async for reply in self._subscribed(request, context):
                yield reply

    async def _subscribed(
        self, request: events_common_pb2.EventSubscriptionRequest, context: Context
    ) -> AsyncIterator[_Response]:
        with self._backend.subscribe(Topic.ANY) as subscription:
            try:
                session_id, after = await self._start(request, context)
            except RequestRefused as refused:
                await abort(context, refused)
            await context.send_initial_metadata(())
            logger.info(
                "events of session %s: subscribed",
                session_id,
                extra={"session_id": session_id},
            )
            events = self._follow(session_id, after, subscription)
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield response(event)
            except EventsExpired as error:
                await context.abort(
                    grpc.StatusCode.DATA_LOSS,
                    f"the stream fell too far behind the events of session "
                    f"{session_id} and some were dropped: subscribe again "
                    f"({error})",
                )
            except BackendError as error:
                # Answered as every other call answers a backend failure: left to
                # gRPC, it would reach the client as UNKNOWN.
                logger.warning(
                    "events of session %s: the backend failed: %s",
                    session_id,
                    error,
                    extra={"session_id": session_id},
                )
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"the events of session {session_id} cannot be read: {error}",
                )

    async def _start(
        self, request: events_common_pb2.EventSubscriptionRequest, context: Context
    ) -> tuple[str, int]:
        """The session to follow and the newest event before the subscription."""
        session_id = required_id(request.session_id, "session_id")
        scope = self._scope(context)
        with backend_errors():
            after = await self._backend.last_event(session_id)
            await scope.session(session_id)
        return session_id, after

    async def _follow(
        self, session_id: str, after: int, subscription: Subscription
    ) -> AsyncGenerator[Event, None]:
        """The session's events after ``after``, as they are committed."""
        closing: asyncio.Future[Any] = asyncio.ensure_future(self._closing.wait())
        try:
            while not self._closing.is_set():
                read_at = time.monotonic()
                events = await self._backend.read_events(
                    after, session_id=session_id, limit=_BATCH
                )
                for event in events:
                    yield event
                if events:
                    after = events[-1].seq
                if len(events) < _BATCH:
                    await self._wait(subscription, closing, read_at)
        finally:
            closing.cancel()

    async def _wait(
        self,
        subscription: Subscription,
        closing: asyncio.Future[Any],
        read_at: float,
    ) -> None:
        """Until a change may have come, or closing; reading at most every
        ``requery_interval`` while changes keep coming."""
        woken: asyncio.Future[Any] = asyncio.ensure_future(
            subscription.wait(self._config.safety_poll)
        )
        try:
            await asyncio.wait((woken, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if closing.done():
            return
        pause = self._config.requery_interval - (time.monotonic() - read_at)
        if pause > 0:
            await asyncio.sleep(pause)
