"""The blocking client: the asyncio client run on a private event loop in a thread."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import (
    AsyncGenerator,
    Callable,
    Collection,
    Coroutine,
    Generator,
    Iterable,
    Sequence,
)
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc

from worker_sdk._model import Configuration, TaskOptions
from worker_sdk.client._async import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    AsyncClient,
    AsyncSession,
)
from worker_sdk.client._connection import PathText
from worker_sdk.client._model import (
    ResultStatus,
    SubmittedTask,
    TaskDetails,
    TaskSpec,
    TaskStatus,
    TaskSummary,
)

__all__ = ["Client", "Session"]

T = TypeVar("T")


class _Portal:
    """An event loop of its own in a daemon thread, running coroutines to the end."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gridpod-client", daemon=True
        )
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C): the call must not go on behind the caller's back.
            future.cancel()
            raise

    def iterate(self, items: AsyncGenerator[T, None]) -> Generator[T, None, None]:
        try:
            while True:
                try:
                    yield self.call(_next(items))
                except StopAsyncIteration:
                    return
        finally:
            self.call(items.aclose())

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        if self.closed:
            return
        self.call(self._loop.shutdown_asyncgens())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _next(items: AsyncGenerator[T, None]) -> T:
    return await items.__anext__()


async def _open(make: Callable[[], AsyncClient]) -> AsyncClient:
    # grpc.aio binds a channel to the loop it is created on: create it on the portal's.
    return make()


class Client:
    """A blocking connection to a control plane; ``AsyncClient`` says what each
    method does. Close it (or use ``with``) when done: it owns a thread."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: PathText | None = None,
        tls_cert: PathText | None = None,
        tls_key: PathText | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        call_timeout: float | timedelta | None = 30.0,
    ) -> None:
        make = functools.partial(
            AsyncClient,
            address,
            credentials=credentials,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            interceptors=interceptors,
            call_timeout=call_timeout,
        )
        self._portal = _Portal()
        opening = _open(make)
        try:
            self._client = self._portal.call(opening)
        except BaseException:
            self._portal.close()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and end the thread; closing twice is harmless."""
        if self._portal.closed:
            return
        try:
            self._portal.call(self._client.close())
        finally:
            self._portal.close()

    def configuration(self) -> Configuration:
        return self._portal.call(self._client.configuration())

    def create_session(
        self, options: TaskOptions | None = None, partitions: Sequence[str] = ()
    ) -> Session:
        session = self._portal.call(self._client.create_session(options, partitions))
        return Session(self._portal, session)

    def open_session(self, session_id: str) -> Session:
        session = self._portal.call(self._client.open_session(session_id))
        return Session(self._portal, session)


class Session:
    """A session, blocking; ``AsyncSession`` says what each method does."""

    def __init__(self, portal: _Portal, session: AsyncSession) -> None:
        self._portal = portal
        self._session = session
        self.session_id = session.session_id

    def __repr__(self) -> str:
        return f"Session({self.session_id!r})"

    def submit(
        self,
        specs: Iterable[TaskSpec],
        options: TaskOptions | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> list[SubmittedTask]:
        return self._portal.call(
            self._session.submit(
                specs, options, batch_size=batch_size, batch_bytes=batch_bytes
            )
        )

    def wait(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        stop_on_error: bool = False,
        stop_on_cancellation: bool = False,
        timeout: float | timedelta | None = None,
    ) -> dict[TaskStatus, int]:
        return self._portal.call(
            self._session.wait(
                task_ids,
                stop_on_error=stop_on_error,
                stop_on_cancellation=stop_on_cancellation,
                timeout=timeout,
            )
        )

    def count_tasks(
        self, task_ids: Iterable[str] | None = None
    ) -> dict[TaskStatus, int]:
        return self._portal.call(self._session.count_tasks(task_ids))

    def wait_for_results(
        self, keys: Iterable[str], *, timeout: float | timedelta | None = None
    ) -> dict[str, ResultStatus]:
        return self._portal.call(self._session.wait_for_results(keys, timeout=timeout))

    def watch(
        self, keys: Iterable[str], statuses: Collection[ResultStatus] = ()
    ) -> Generator[tuple[str, ResultStatus], None, None]:
        return self._portal.iterate(self._session.watch(keys, statuses))

    def result(self, key: str) -> bytes:
        return self._portal.call(self._session.result(key))

    def stream_result(self, key: str) -> Generator[bytes, None, None]:
        return self._portal.iterate(self._session.stream_result(key))

    def result_to(self, key: str, path: str | os.PathLike[str]) -> int:
        return self._portal.call(self._session.result_to(key, path))

    def task_status(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        return self._portal.call(self._session.task_status(task_ids))

    def result_status(self, keys: Iterable[str]) -> dict[str, ResultStatus]:
        return self._portal.call(self._session.result_status(keys))

    def get_task(self, task_id: str) -> TaskDetails:
        return self._portal.call(self._session.get_task(task_id))

    def list_tasks(self, status: TaskStatus | None = None) -> list[TaskSummary]:
        return self._portal.call(self._session.list_tasks(status))

    def cancel_tasks(self, task_ids: Iterable[str]) -> None:
        self._portal.call(self._session.cancel_tasks(task_ids))

    def cancel(self) -> None:
        self._portal.call(self._session.cancel())
