"""The asyncio client of the control plane: sessions, submission, waits and results."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Collection, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import grpc

from gridpod_api import (
    objects_pb2,
    result_status_pb2,
    sessions_common_pb2,
    submitter_common_pb2,
    task_status_pb2,
    tasks_common_pb2,
)
from worker_sdk._model import Configuration, TaskOptions
from worker_sdk.client._connection import Connection, PathText, seconds, tls_files
from worker_sdk.client._errors import (
    ClientError,
    NotFoundError,
    Refusal,
    ResultAborted,
    ResultNotReady,
    SubmissionError,
    WaitTimeout,
    converted,
    from_rpc_error,
)
from worker_sdk.client._model import (
    ResultStatus,
    SubmittedTask,
    TaskDetails,
    TaskSpec,
    TaskStatus,
    TaskSummary,
)
from worker_sdk.client._submit import (
    Planned,
    batches,
    read_reply,
    request_messages,
    small_request,
)

__all__ = ["AsyncClient", "AsyncSession"]

logger = logging.getLogger(__name__)

# How long a finished result stream may take to send its status.
_STATUS_WAIT = 1.0

DEFAULT_BATCH_SIZE = 500
DEFAULT_BATCH_BYTES = 64 * 1024 * 1024
# Keys per WatchResults request, so that no request grows with the number of keys.
_WATCH_KEYS_PER_REQUEST = 1000
_LIST_PAGE_SIZE = 1000
# Up to this many keys, a wait makes one WaitForAvailability call per key; more
# share one WatchResults stream.
_AVAILABILITY_KEYS = 8
_Filter = submitter_common_pb2.TaskFilter
_SETTLED = (ResultStatus.COMPLETED, ResultStatus.ABORTED, ResultStatus.NOTFOUND)


class AsyncClient:
    """A connection to a control plane, at ``host:port`` or ``unix:///path``.

    ``call_timeout`` bounds calls that should answer at once (creating a session,
    reading statuses); submissions, waits, result streams and watches take as long
    as they need. Create it inside a running event loop, and close it (or use
    ``async with``) when done.

    TLS: ``tls_ca`` is the CA (PEM file) that signed the control plane's
    certificate; ``tls_cert`` and ``tls_key`` are the client's certificate and key,
    for a control plane that requires them (mutual TLS), whose CN or a SAN names
    the user. Given only a certificate, the system's roots are trusted. Or pass
    any ``credentials`` of gRPC's instead.
    """

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
        self._connection = Connection(
            address,
            credentials=credentials,
            tls=tls_files(tls_ca, tls_cert, tls_key),
            interceptors=interceptors,
            call_timeout=seconds(call_timeout),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._connection.close()

    async def configuration(self) -> Configuration:
        """What the control plane announces: the size of the chunks it takes."""
        return await self._connection.configuration()

    async def create_session(
        self, options: TaskOptions | None = None, partitions: Sequence[str] = ()
    ) -> AsyncSession:
        """A new session; ``options`` are the defaults of its tasks."""
        if isinstance(partitions, str):
            raise TypeError(f"partitions takes a list, not the string {partitions!r}")
        request = submitter_common_pb2.CreateSessionRequest(
            default_task_option=(options or TaskOptions()).to_proto(),
            partition_ids=partitions,
        )
        connection = self._connection
        with converted(f"creating a session on {connection.address}"):
            reply = await connection.submitter.CreateSession(
                request, timeout=connection.call_timeout
            )
        logger.info(
            "created session %s",
            reply.session_id,
            extra={"session_id": reply.session_id},
        )
        return AsyncSession(connection, reply.session_id)

    async def open_session(self, session_id: str) -> AsyncSession:
        """The session ``session_id``, once the control plane confirmed it exists."""
        connection = self._connection
        request = sessions_common_pb2.GetSessionRequest(session_id=session_id)
        with converted(f"opening session {session_id}"):
            await connection.sessions.GetSession(
                request, timeout=connection.call_timeout
            )
        return AsyncSession(connection, session_id)


class AsyncSession:
    """A session of a control plane: submit tasks to it, wait for them, read results."""

    def __init__(self, connection: Connection, session_id: str) -> None:
        self._connection = connection
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"AsyncSession({self.session_id!r})"

    # -- submitting -----------------------------------------------------------------

    async def submit(
        self,
        specs: Iterable[TaskSpec],
        options: TaskOptions | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> list[SubmittedTask]:
        """Create the tasks, in order, one request per batch; the created tasks.

        ``options`` are merged field by field over the session's defaults. A batch
        holds at most ``batch_size`` tasks and closes once its payloads reach
        ``batch_bytes`` (a payload given as chunks counts as empty). Payloads of
        files and iterables are streamed in chunks, never read whole. Batches go
        one after the other, so a task may depend on outputs of tasks before it.

        Raises ``SubmissionError`` once every batch was sent if any task was refused
        (a key already in the session, an unknown data dependency...): it lists the
        refusals, and the tasks that were created and will run. A request that fails
        as a whole (unreachable control plane, session cancelled meanwhile) raises
        at once, saying how many tasks the earlier requests created; those run.
        """
        message = (options or TaskOptions()).to_proto()
        chunk_size = (await self._connection.configuration()).data_chunk_max_size
        created: list[SubmittedTask] = []
        refused: list[Refusal] = []
        for batch in batches(specs, batch_size, batch_bytes):
            accepted, refusals = await self._send_batch(
                batch, message, chunk_size, len(created)
            )
            created += accepted
            refused += refusals
        if refused:
            raise SubmissionError(refused, created)
        return created

    async def _send_batch(
        self,
        batch: Sequence[Planned],
        options: objects_pb2.TaskOptions,
        chunk_size: int,
        earlier: int,
    ) -> tuple[list[SubmittedTask], list[Refusal]]:
        first, last = batch[0].index, batch[-1].index
        doing = (
            f"submitting tasks {first} to {last} to session {self.session_id} "
            f"({earlier} tasks of earlier requests were created)"
        )
        started = time.monotonic()
        submitter = self._connection.submitter
        small = small_request(self.session_id, options, batch, chunk_size)
        with converted(doing):
            if small is not None:
                reply = await submitter.CreateSmallTasks(small)
            else:
                messages = request_messages(self.session_id, options, batch, chunk_size)
                reply = await submitter.CreateLargeTasks(messages)
        created, refused = read_reply(reply, batch)
        logger.debug(
            "session %s: sent %d tasks, %d refused, in %.3fs",
            self.session_id,
            len(batch),
            len(refused),
            time.monotonic() - started,
            extra={"session_id": self.session_id, "tasks": len(batch)},
        )
        return created, refused

    # -- waiting --------------------------------------------------------------------

    async def wait(
        self,
        task_ids: Iterable[str] | None = None,
        *,
        stop_on_error: bool = False,
        stop_on_cancellation: bool = False,
        timeout: float | timedelta | None = None,
    ) -> dict[TaskStatus, int]:
        """Wait until the tasks (every task of the session by default) are final.

        With ``stop_on_error`` (``stop_on_cancellation``) the wait ends at the first
        failed (cancelled) task. Returns how many tasks are in each status; raises
        ``WaitTimeout`` when ``timeout`` passes first.
        """
        request = submitter_common_pb2.WaitRequest(
            filter=self._filter(task_ids),
            stop_on_first_task_error=stop_on_error,
            stop_on_first_task_cancellation=stop_on_cancellation,
        )
        limit = seconds(timeout)
        try:
            reply = await self._connection.submitter.WaitForCompletion(
                request, timeout=limit
            )
        except grpc.aio.AioRpcError as error:
            raise self._wait_error(error, limit) from error
        return {TaskStatus(count.status): count.count for count in reply.values}

    async def count_tasks(
        self, task_ids: Iterable[str] | None = None
    ) -> dict[TaskStatus, int]:
        """How many of the tasks (every task of the session by default) are in each
        status now, without waiting."""
        request = self._filter(task_ids)
        with converted(f"counting tasks of session {self.session_id}"):
            reply = await self._connection.submitter.CountTasks(
                request, timeout=self._connection.call_timeout
            )
        return {TaskStatus(count.status): count.count for count in reply.values}

    def _filter(
        self, task_ids: Iterable[str] | None
    ) -> submitter_common_pb2.TaskFilter:
        if task_ids is None:
            return _Filter(session=_Filter.IdsRequest(ids=[self.session_id]))
        if isinstance(task_ids, str):
            raise TypeError(
                f"task_ids takes a list of ids, not the string {task_ids!r}"
            )
        return _Filter(task=_Filter.IdsRequest(ids=list(task_ids)))

    def _wait_error(
        self, error: grpc.aio.AioRpcError, limit: float | None
    ) -> ClientError:
        if limit is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return WaitTimeout(
                f"the tasks of session {self.session_id} were not all final "
                f"after {limit}s",
                error.code(),
                error.details() or "",
            )
        return from_rpc_error(error, f"waiting for tasks of session {self.session_id}")

    async def wait_for_results(
        self, keys: Iterable[str], *, timeout: float | timedelta | None = None
    ) -> dict[str, ResultStatus]:
        """Wait until each result is COMPLETED or ABORTED; the status of each.

        Returns as soon as the last one settles. Raises ``NotFoundError`` for a key
        the session does not have, ``WaitTimeout`` when ``timeout`` passes first.
        """
        pending = set(_keys(keys))
        settled: dict[str, ResultStatus] = {}
        limit = seconds(timeout)
        try:
            await asyncio.wait_for(self._settle(pending, settled), limit)
        except asyncio.TimeoutError:
            raise WaitTimeout(
                f"{len(pending)} results of session {self.session_id} were not "
                f"settled after {limit}s, {sorted(pending)[:5]} among them"
            ) from None
        return settled

    async def _settle(
        self, pending: set[str], settled: dict[str, ResultStatus]
    ) -> None:
        if not pending:
            return
        if len(pending) <= _AVAILABILITY_KEYS:
            await self._await_each(pending, settled)
            return
        replies = self._watch_replies(list(pending), _SETTLED)
        async with contextlib.aclosing(replies):
            async for status, keys in replies:
                if status == ResultStatus.NOTFOUND:
                    raise NotFoundError(
                        f"waiting for results of session {self.session_id}: "
                        f"the session has no result {', '.join(keys)}"
                    )
                settled.update(await self._confirm(pending.intersection(keys)))
                pending.difference_update(settled)
                if not pending:
                    return

    async def _await_each(
        self, pending: set[str], settled: dict[str, ResultStatus]
    ) -> None:
        # One call per key, named with its session: an answer needs no second
        # look, where a watch's must be checked against this session.
        calls = [self._availability(key) for key in sorted(pending)]
        for key, status in await asyncio.gather(*calls):
            settled[key] = status
            pending.discard(key)

    async def _availability(self, key: str) -> tuple[str, ResultStatus]:
        request = objects_pb2.ResultRequest(session=self.session_id, result_id=key)
        doing = f"waiting for result {key!r} of session {self.session_id}"
        with converted(doing):
            reply = await self._connection.submitter.WaitForAvailability(request)
        kind = reply.WhichOneof("type")
        if kind == "ok":
            return key, ResultStatus.COMPLETED
        if kind == "error":
            return key, ResultStatus.ABORTED
        raise ClientError(f"{doing}: the control plane answered {kind or 'nothing'}")

    async def _confirm(self, keys: set[str]) -> dict[str, ResultStatus]:
        # A watch matches keys in every session: ask this session for its own.
        if not keys:
            return {}
        statuses = await self.result_status(keys)
        return {k: s for k, s in statuses.items() if s in _SETTLED}

    async def watch(
        self, keys: Iterable[str], statuses: Collection[ResultStatus] = ()
    ) -> AsyncGenerator[tuple[str, ResultStatus], None]:
        """Each key's status now, then each change, as ``(key, status)``, forever.

        With ``statuses``, only those are reported. A key no session has comes once
        as NOTFOUND. The API's watch carries no session: a key that other sessions
        use too is reported for each of them. Stop iterating (or close the
        iterator) to end the watch.
        """
        replies = self._watch_replies(_keys(keys), statuses)
        async with contextlib.aclosing(replies):
            async for status, ids in replies:
                for key in ids:
                    yield key, status

    async def _watch_replies(
        self, keys: Sequence[str], statuses: Collection[ResultStatus]
    ) -> AsyncGenerator[tuple[ResultStatus, Sequence[str]], None]:
        wanted = [result_status_pb2.ResultStatus.ValueType(s) for s in statuses]
        call = self._connection.submitter.WatchResults()
        try:
            with converted(f"watching results of session {self.session_id}"):
                await self._ask_watch(call, keys, wanted)
                async for reply in call:
                    yield ResultStatus(reply.status), reply.result_ids
        finally:
            call.cancel()

    @staticmethod
    async def _ask_watch(
        call: grpc.aio.StreamStreamCall[
            submitter_common_pb2.WatchResultRequest,
            submitter_common_pb2.WatchResultStream,
        ],
        keys: Sequence[str],
        statuses: Sequence[result_status_pb2.ResultStatus.ValueType],
    ) -> None:
        # The request side stays open: the control plane ends a watch at its close.
        for start in range(0, len(keys), _WATCH_KEYS_PER_REQUEST):
            await call.write(
                submitter_common_pb2.WatchResultRequest(
                    fetch_statuses=statuses,
                    watch_statuses=statuses,
                    result_ids=keys[start : start + _WATCH_KEYS_PER_REQUEST],
                )
            )

    # -- results --------------------------------------------------------------------

    async def result(self, key: str) -> bytes:
        """The data of a completed result, whole.

        Raises ``ResultNotReady`` while its task runs, ``ResultAborted`` with the
        task's error when it failed, ``NotFoundError`` for an unknown key.
        """
        return b"".join([chunk async for chunk in self.stream_result(key)])

    async def stream_result(self, key: str) -> AsyncGenerator[bytes, None]:
        """The data of a completed result, chunk by chunk; raises as ``result``."""
        request = objects_pb2.ResultRequest(session=self.session_id, result_id=key)
        call = self._connection.submitter.TryGetResultStream(request)
        doing = f"reading result {key!r} of session {self.session_id}"
        try:
            with converted(doing):
                async for reply in call:
                    chunk = _chunk(reply, key)
                    if chunk is None:
                        await _ended(call)
                        return
                    yield chunk
            raise ClientError(f"{doing}: the stream ended before the data was complete")
        finally:
            call.cancel()

    async def result_to(self, key: str, path: str | os.PathLike[str]) -> int:
        """Write a completed result to ``path``; its size in bytes.

        The data goes to a temporary file beside ``path``, renamed once complete:
        ``path`` is never left holding part of a result. Raises as ``result``.
        """
        target = Path(path)
        partial = target.with_name(f".{target.name}.part")
        size = 0
        try:
            with partial.open("wb") as file:
                async for chunk in self.stream_result(key):
                    file.write(chunk)
                    size += len(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return size

    # -- statuses and listings --------------------------------------------------------

    async def task_status(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        """The status of each task."""
        request = submitter_common_pb2.GetTaskStatusRequest(task_ids=_keys(task_ids))
        with converted(f"reading task statuses in session {self.session_id}"):
            reply = await self._connection.submitter.GetTaskStatus(
                request, timeout=self._connection.call_timeout
            )
        return {s.task_id: TaskStatus(s.status) for s in reply.id_statuses}

    async def result_status(self, keys: Iterable[str]) -> dict[str, ResultStatus]:
        """The status of each result of the session."""
        request = submitter_common_pb2.GetResultStatusRequest(
            result_ids=_keys(keys), session_id=self.session_id
        )
        with converted(f"reading result statuses of session {self.session_id}"):
            reply = await self._connection.submitter.GetResultStatus(
                request, timeout=self._connection.call_timeout
            )
        return {s.result_id: ResultStatus(s.status) for s in reply.id_statuses}

    async def get_task(self, task_id: str) -> TaskDetails:
        """Everything the control plane tells of one task, its error message too."""
        request = tasks_common_pb2.GetTaskRequest(task_id=task_id)
        with converted(f"reading task {task_id}"):
            reply = await self._connection.tasks.GetTask(
                request, timeout=self._connection.call_timeout
            )
        return TaskDetails.from_raw(reply.task)

    async def list_tasks(self, status: TaskStatus | None = None) -> list[TaskSummary]:
        """The tasks of the session (of one status, if given), oldest first."""
        listed: list[TaskSummary] = []
        page = 0
        while True:
            reply = await self._list_page(status, page)
            listed += [TaskSummary.from_proto(task) for task in reply.tasks]
            if not reply.tasks or len(listed) >= reply.total:
                return listed
            page += 1

    async def _list_page(
        self, status: TaskStatus | None, page: int
    ) -> tasks_common_pb2.ListTasksResponse:
        request = tasks_common_pb2.ListTasksRequest(
            page=page,
            page_size=_LIST_PAGE_SIZE,
            filter=tasks_common_pb2.ListTasksRequest.Filter(
                session_id=self.session_id,
                status=task_status_pb2.TaskStatus.ValueType(status or 0),
            ),
            sort=tasks_common_pb2.ListTasksRequest.Sort(
                field=tasks_common_pb2.ListTasksRequest.ORDER_BY_FIELD_CREATED_AT,
                direction=tasks_common_pb2.ListTasksRequest.ORDER_DIRECTION_ASC,
            ),
            with_errors=True,
        )
        with converted(f"listing tasks of session {self.session_id}"):
            return await self._connection.tasks.ListTasks(
                request, timeout=self._connection.call_timeout
            )

    # -- cancelling -------------------------------------------------------------------

    async def cancel_tasks(self, task_ids: Iterable[str]) -> None:
        """Cancel the tasks that are not final yet; their outputs are aborted."""
        request = _Filter(task=_Filter.IdsRequest(ids=_keys(task_ids)))
        with converted(f"cancelling tasks of session {self.session_id}"):
            await self._connection.submitter.CancelTasks(
                request, timeout=self._connection.call_timeout
            )

    async def cancel(self) -> None:
        """Cancel the session and every task of it that is not final."""
        with converted(f"cancelling session {self.session_id}"):
            await self._connection.submitter.CancelSession(
                objects_pb2.Session(id=self.session_id),
                timeout=self._connection.call_timeout,
            )
        logger.info(
            "cancelled session %s",
            self.session_id,
            extra={"session_id": self.session_id},
        )


def _keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError(f"expected a list of ids, not the string {keys!r}")
    return list(keys)


def _chunk(reply: submitter_common_pb2.ResultReply, key: str) -> bytes | None:
    """The data a reply carries, None once complete; raises what it reports."""
    kind = reply.WhichOneof("type")
    if kind == "result":
        return reply.result.data if reply.result.WhichOneof("type") == "data" else None
    if kind == "error":
        details = [error.detail for error in reply.error.errors]
        raise ResultAborted(key, reply.error.task_id, details)
    if kind == "not_completed_task":
        raise ResultNotReady(key, reply.not_completed_task or "unknown")
    raise ClientError(f"reading result {key!r}: the control plane sent an empty reply")


async def _ended(call: grpc.aio.Call) -> None:
    """Wait briefly for the status that follows a stream's last message: a call
    cancelled before it arrives costs both sides more than the wait."""
    if call.done():
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(call.code(), _STATUS_WAIT)
