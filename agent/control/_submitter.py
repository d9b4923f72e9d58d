"""The Submitter service: ArmoniK's client API of sessions, tasks and results.

Unknown ids are answered NOT_FOUND, malformed requests INVALID_ARGUMENT naming what is
wrong, tasks for a cancelled session FAILED_PRECONDITION; a refused request stores
nothing. Waits and watches wake on the backend's notifications of state changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from agent.backend import (
    Backend,
    BackendError,
    BlobRef,
    NewTask,
    NotCompleted,
    ResultQuery,
    ResultRecord,
    ResultStatus,
    SessionCancelled,
    SessionQuery,
    SessionStatus,
    TaskQuery,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
)
from agent.control._access import Access
from agent.control._config import ControlPlaneConfig
from agent.control._large_tasks import LargeTaskStream, store_payloads
from agent.control._limits import (
    OpenStreams,
    check_payload_size,
    check_task_count,
    check_task_keys,
)
from agent.control._status import RequestRefused, abort, backend_errors, invalid
from agent.control._visibility import Scope, ScopedService
from agent.control._watch import CompletionWait, wait_until, watch_results
from gridpod_api import (
    objects_pb2,
    result_status_pb2,
    submitter_common_pb2,
    submitter_service_pb2_grpc,
    task_status_pb2,
)
from worker_sdk._data import iter_chunks

__all__ = ["SubmitterService"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]
_Common = submitter_common_pb2
_Reply = submitter_common_pb2.CreateTaskReply
# Never changed once built: every result stream ends with this very message.
_DATA_COMPLETE = _Common.ResultReply(result=objects_pb2.DataChunk(data_complete=True))

_FINAL = tuple(status for status in TaskStatus if status.is_final)
_TASK_STATUSES = frozenset(int(status) for status in TaskStatus)
_SESSION_STATUSES = frozenset(int(status) for status in SessionStatus)
# Bounds how long one cancellation holds the backend's write lock.
_CANCEL_BATCH = 500


async def _answer(rpc: str, context: _Context, call: Awaitable[_T]) -> _T:
    """The reply of ``call``, or the status it was refused with."""
    try:
        with backend_errors():
            return await call
    except RequestRefused as refused:
        logger.info("%s refused (%s): %s", rpc, refused.code.name, refused.details)
        await abort(context, refused)


async def _answer_stream(
    rpc: str, context: _Context, replies: AsyncIterator[_T]
) -> AsyncIterator[_T]:
    try:
        with backend_errors():
            async for reply in replies:
                yield reply
    except RequestRefused as refused:
        logger.info("%s refused (%s): %s", rpc, refused.code.name, refused.details)
        await abort(context, refused)


class SubmitterService(ScopedService, submitter_service_pb2_grpc.SubmitterServicer):
    """Sessions, tasks and results of the grid for its clients, over the backend.

    A caller sees only its own sessions, with their tasks and results, unless it
    may see every one: the others' answer NOT_FOUND, as ids that do not exist.
    """

    def __init__(
        self,
        backend: Backend,
        config: ControlPlaneConfig,
        streams: OpenStreams | None = None,
        access: Access | None = None,
    ) -> None:
        super().__init__(backend, config, access)
        # Shared with the other services of the control plane that stream.
        self._streams = streams or OpenStreams(config)

    # -- sessions -------------------------------------------------------------------

    async def GetServiceConfiguration(
        self, request: objects_pb2.Empty, context: _Context
    ) -> objects_pb2.Configuration:
        return objects_pb2.Configuration(
            data_chunk_max_size=self._config.data_chunk_max_size
        )

    async def CreateSession(
        self, request: _Common.CreateSessionRequest, context: _Context
    ) -> _Common.CreateSessionReply:
        return await _answer(
            "CreateSession", context, self._create_session(request, context)
        )

    async def CancelSession(
        self, request: objects_pb2.Session, context: _Context
    ) -> objects_pb2.Empty:
        return await _answer(
            "CancelSession", context, self._cancel_session(request, context)
        )

    async def ListSessions(
        self, request: _Common.SessionFilter, context: _Context
    ) -> _Common.SessionIdList:
        return await _answer(
            "ListSessions", context, self._list_sessions(request, context)
        )

    async def _create_session(
        self, request: _Common.CreateSessionRequest, context: _Context
    ) -> _Common.CreateSessionReply:
        if not request.HasField("default_task_option"):
            invalid(
                "CreateSession needs default_task_option: the options every task "
                "of the session starts from"
            )
        options = request.default_task_option
        _check_options(options, "default_task_option")
        partitions = tuple(request.partition_ids)
        _check_partitions(options, partitions)
        owner = self._scope(context).owner
        session = await self._backend.create_session(options, partitions, owner=owner)
        logger.info(
            "created session %s",
            session.session_id,
            extra={"session_id": session.session_id},
        )
        return _Common.CreateSessionReply(session_id=session.session_id)

    async def _cancel_session(
        self, request: objects_pb2.Session, context: _Context
    ) -> objects_pb2.Empty:
        session_id = _required(request.id, "Session.id")
        await self._scope(context).require(session_id)
        await self._backend.cancel_session(session_id)
        logger.info(
            "cancelled session %s", session_id, extra={"session_id": session_id}
        )
        return objects_pb2.Empty()

    async def _list_sessions(
        self, request: _Common.SessionFilter, context: _Context
    ) -> _Common.SessionIdList:
        query = _session_query(request)
        if query is None:
            return _Common.SessionIdList()
        page = await self._backend.list_sessions(self._scope(context).sessions(query))
        return _Common.SessionIdList(session_ids=[s.session_id for s in page.items])

    async def _running_session(self, scope: Scope, session_id: str) -> None:
        """Refuse a session that cannot take tasks before any payload is stored."""
        session = await scope.session(session_id)
        if session.status == SessionStatus.CANCELLED:
            raise SessionCancelled(
                f"session {session_id} is cancelled: it takes no new tasks"
            )

    # -- creating tasks -------------------------------------------------------------

    async def CreateSmallTasks(
        self, request: _Common.CreateSmallTaskRequest, context: _Context
    ) -> _Reply:
        return await _answer(
            "CreateSmallTasks", context, self._create_small_tasks(request, context)
        )

    async def CreateLargeTasks(
        self,
        request_iterator: AsyncIterator[_Common.CreateLargeTaskRequest],
        context: _Context,
    ) -> _Reply:
        return await _answer(
            "CreateLargeTasks",
            context,
            self._create_large_tasks(request_iterator, context),
        )

    async def _create_small_tasks(
        self, request: _Common.CreateSmallTaskRequest, context: _Context
    ) -> _Reply:
        session_id = _required(request.session_id, "CreateSmallTaskRequest.session_id")
        if not request.task_requests:
            invalid("CreateSmallTasks got no task_requests: there is nothing to create")
        options = _given_options(request, "task_options")
        self._check_small_tasks(request.task_requests)
        # The payloads are here already: no session check before storing them
        # (submit_tasks refuses an unknown or cancelled session, and the payloads
        # are then deleted), which spares the common case a call to the backend.
        # Another user's session is refused before, as one that does not exist.
        await self._scope(context).require(session_id)
        payloads = await store_payloads(
            self._backend,
            [[task.payload] for task in request.task_requests],
            session_id,
        )
        tasks = [
            NewTask(
                payload=payload,
                expected_outputs=tuple(task.expected_output_keys),
                data_dependencies=tuple(task.data_dependencies),
            )
            for task, payload in zip(request.task_requests, payloads, strict=True)
        ]
        return await self._submit(session_id, tasks, options)

    def _check_small_tasks(self, requests: Sequence[objects_pb2.TaskRequest]) -> None:
        config = self._config
        check_task_count(config, len(requests))
        for index, task in enumerate(requests):
            check_task_keys(
                config, index, task.expected_output_keys, task.data_dependencies
            )
            check_payload_size(config, index, len(task.payload))

    async def _create_large_tasks(
        self,
        messages: AsyncIterator[_Common.CreateLargeTaskRequest],
        context: _Context,
    ) -> _Reply:
        with self._streams.held(context):
            stream = LargeTaskStream(messages, self._config)
            init = await stream.init_request()
            session_id = _required(init.session_id, "init_request.session_id")
            options = _given_options(init, "task_options")
            # Checked before the payloads stream in, so that a client of an unknown
            # or cancelled session does not upload them for nothing.
            await self._running_session(self._scope(context), session_id)
            tasks = await stream.tasks(self._backend, session_id)
            return await self._submit(session_id, tasks, options)

    async def _submit(
        self,
        session_id: str,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None,
    ) -> _Reply:
        try:
            created = await self._backend.submit_tasks(session_id, tasks, options)
        except BaseException:
            await _discard(self._backend, [task.payload for task in tasks])
            raise
        # A refused task stores nothing: not even its payload.
        refusals = [item for item in created if isinstance(item, TaskRefusal)]
        await _discard(self._backend, [tasks[r.index].payload for r in refusals])
        refused = len(refusals)
        logger.info(
            "session %s: created %d tasks, refused %d",
            session_id,
            len(created) - refused,
            refused,
            extra={"session_id": session_id},
        )
        return _Reply(
            creation_status_list=_Reply.CreationStatusList(
                creation_statuses=[_creation_status(item) for item in created]
            )
        )

    # -- tasks ----------------------------------------------------------------------

    async def ListTasks(
        self, request: _Common.TaskFilter, context: _Context
    ) -> objects_pb2.TaskIdList:
        return await _answer("ListTasks", context, self._list_tasks(request, context))

    async def CountTasks(
        self, request: _Common.TaskFilter, context: _Context
    ) -> objects_pb2.Count:
        return await _answer("CountTasks", context, self._count_tasks(request, context))

    async def GetTaskStatus(
        self, request: _Common.GetTaskStatusRequest, context: _Context
    ) -> _Common.GetTaskStatusReply:
        return await _answer(
            "GetTaskStatus", context, self._task_statuses(request, context)
        )

    async def TryGetTaskOutput(
        self, request: objects_pb2.TaskOutputRequest, context: _Context
    ) -> objects_pb2.Output:
        return await _answer(
            "TryGetTaskOutput", context, self._task_output(request, context)
        )

    async def CancelTasks(
        self, request: _Common.TaskFilter, context: _Context
    ) -> objects_pb2.Empty:
        return await _answer(
            "CancelTasks", context, self._cancel_tasks(request, context)
        )

    async def WaitForCompletion(
        self, request: _Common.WaitRequest, context: _Context
    ) -> objects_pb2.Count:
        return await _answer(
            "WaitForCompletion", context, self._wait_for_completion(request, context)
        )

    async def _list_tasks(
        self, task_filter: _Common.TaskFilter, context: _Context
    ) -> objects_pb2.TaskIdList:
        query = await self._scoped(context, _task_query(task_filter))
        if query is None:
            return objects_pb2.TaskIdList()
        page = await self._backend.list_tasks(query)
        return objects_pb2.TaskIdList(task_ids=[t.task_id for t in page.items])

    async def _count_tasks(
        self, task_filter: _Common.TaskFilter, context: _Context
    ) -> objects_pb2.Count:
        query = await self._scoped(context, _task_query(task_filter))
        if query is None:
            return objects_pb2.Count()
        return _count(await self._backend.count_tasks(query))

    async def _scoped(
        self, context: _Context, query: TaskQuery | None
    ) -> TaskQuery | None:
        """The query kept to the sessions the caller sees; None selects nothing."""
        return None if query is None else await self._scope(context).tasks(query)

    async def _task_statuses(
        self, request: _Common.GetTaskStatusRequest, context: _Context
    ) -> _Common.GetTaskStatusReply:
        tasks = await self._known_tasks(self._scope(context), request.task_ids)
        IdStatus = _Common.GetTaskStatusReply.IdStatus
        return _Common.GetTaskStatusReply(
            id_statuses=[
                IdStatus(task_id=task_id, status=_task_status(tasks[task_id].status))
                for task_id in request.task_ids
            ]
        )

    async def _known_tasks(
        self, scope: Scope, task_ids: Iterable[str]
    ) -> dict[str, TaskRecord]:
        """The records of the tasks; NOT_FOUND naming those that do not exist, or
        that the caller does not see."""
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return {}
        query = await scope.tasks(TaskQuery(task_ids=wanted))
        found = [] if query is None else (await self._backend.list_tasks(query)).items
        tasks = {task.task_id: task for task in found}
        missing = [task_id for task_id in wanted if task_id not in tasks]
        if missing:
            raise RequestRefused(
                grpc.StatusCode.NOT_FOUND, f"unknown task ids: {', '.join(missing)}"
            )
        return tasks

    async def _task_output(
        self, request: objects_pb2.TaskOutputRequest, context: _Context
    ) -> objects_pb2.Output:
        """ok for a COMPLETED task; otherwise error, whose details say why.

        A task that has not ended yet is answered with an error saying so and its
        status, rather than an empty one: the caller can tell it from a failure by
        asking GetTaskStatus. The session, when given, must be the task's.
        """
        task_id = _required(request.task_id, "TaskOutputRequest.task_id")
        task = await self._scope(context).task(task_id)
        if request.session and request.session != task.session_id:
            raise RequestRefused(
                grpc.StatusCode.NOT_FOUND,
                f"no task {task_id} in session {request.session}",
            )
        if task.status == TaskStatus.COMPLETED:
            return objects_pb2.Output(ok=objects_pb2.Empty())
        if task.status.is_final:
            details = _ending(task)
        else:
            details = f"task {task_id} is not finished: it is {task.status.name}"
        return objects_pb2.Output(error=objects_pb2.Output.Error(details=details))

    async def _cancel_tasks(
        self, task_filter: _Common.TaskFilter, context: _Context
    ) -> objects_pb2.Empty:
        scope = self._scope(context)
        kind = task_filter.WhichOneof("ids")
        if kind is None or not getattr(task_filter, kind).ids:
            invalid(
                "CancelTasks needs a filter naming sessions or tasks: an empty one "
                "would cancel every task of the grid"
            )
        if kind == "session":
            for session_id in task_filter.session.ids:
                await scope.session(session_id)
        else:
            await self._known_tasks(scope, task_filter.task.ids)
        query = _task_query(task_filter)
        if query is not None:
            query = await scope.tasks(query)
        if query is None:
            return objects_pb2.Empty()
        query = replace(query, excluded_statuses=(*query.excluded_statuses, *_FINAL))
        task_ids = [
            task.task_id for task in (await self._backend.list_tasks(query)).items
        ]
        for start in range(0, len(task_ids), _CANCEL_BATCH):
            await self._backend.cancel_tasks(task_ids[start : start + _CANCEL_BATCH])
        logger.info("cancelled %d tasks", len(task_ids))
        return objects_pb2.Empty()

    async def _wait_for_completion(
        self, request: _Common.WaitRequest, context: _Context
    ) -> objects_pb2.Count:
        query = await self._scoped(context, _task_query(request.filter))
        if query is None:
            return objects_pb2.Count()
        wait = CompletionWait(self._backend, query, request)
        return _count(await wait_until(self._backend, self._config, wait.check))

    # -- results --------------------------------------------------------------------

    async def GetResultStatus(
        self, request: _Common.GetResultStatusRequest, context: _Context
    ) -> _Common.GetResultStatusReply:
        return await _answer(
            "GetResultStatus", context, self._result_statuses(request, context)
        )

    async def TryGetResultStream(
        self, request: objects_pb2.ResultRequest, context: _Context
    ) -> AsyncIterator[_Common.ResultReply]:
        replies = self._while_held(context, self._result_stream(request, context))
        async for reply in _answer_stream("TryGetResultStream", context, replies):
            yield reply

    async def WaitForAvailability(
        self, request: objects_pb2.ResultRequest, context: _Context
    ) -> _Common.AvailabilityReply:
        return await _answer(
            "WaitForAvailability",
            context,
            self._wait_for_availability(request, context),
        )

    async def WatchResults(
        self,
        request_iterator: AsyncIterator[_Common.WatchResultRequest],
        context: _Context,
    ) -> AsyncIterator[_Common.WatchResultStream]:
        replies = self._while_held(
            context, self._watch_results(request_iterator, context)
        )
        async for reply in _answer_stream("WatchResults", context, replies):
            yield reply

    async def _watch_results(
        self, requests: AsyncIterator[_Common.WatchResultRequest], context: _Context
    ) -> AsyncIterator[_Common.WatchResultStream]:
        scope = self._scope(context)
        async for reply in watch_results(self._backend, self._config, requests, scope):
            yield reply

    async def _while_held(
        self, context: _Context, replies: AsyncIterator[_T]
    ) -> AsyncIterator[_T]:
        """The replies of a stream, counted among the caller's open streams."""
        with self._streams.held(context):
            async for reply in replies:
                yield reply

    async def _result_statuses(
        self, request: _Common.GetResultStatusRequest, context: _Context
    ) -> _Common.GetResultStatusReply:
        session_id = _required(request.session_id, "GetResultStatusRequest.session_id")
        await self._scope(context).session(session_id)
        wanted = list(dict.fromkeys(request.result_ids))
        results: dict[str, ResultRecord] = {}
        if wanted:
            query = ResultQuery(session_ids=[session_id], keys=wanted)
            results = {
                r.key: r for r in (await self._backend.list_results(query)).items
            }
        missing = [key for key in wanted if key not in results]
        if missing:
            raise RequestRefused(
                grpc.StatusCode.NOT_FOUND,
                f"no result {', '.join(missing)} in session {session_id}",
            )
        IdStatus = _Common.GetResultStatusReply.IdStatus
        return _Common.GetResultStatusReply(
            id_statuses=[
                IdStatus(result_id=key, status=_result_status(results[key].status))
                for key in request.result_ids
            ]
        )

    async def _result(self, request: objects_pb2.ResultRequest) -> ResultRecord:
        session_id = _required(request.session, "ResultRequest.session")
        key = _required(request.result_id, "ResultRequest.result_id")
        return await self._backend.get_result(session_id, key)

    async def _result_stream(
        self, request: objects_pb2.ResultRequest, context: _Context
    ) -> AsyncIterator[_Common.ResultReply]:
        session_id = _required(request.session, "ResultRequest.session")
        key = _required(request.result_id, "ResultRequest.result_id")
        await self._scope(context).require(session_id)
        # Most reads are of completed results: read at once, and ask why there is
        # no data only when there is none.
        stored = self._backend.read_result(session_id, key)
        try:
            first = await anext(stored, None)
        except NotCompleted:
            result = await self._backend.get_result(session_id, key)
            if result.status == ResultStatus.CREATED:
                yield _Common.ResultReply(not_completed_task=result.owner_task_id)
                return
            if result.status == ResultStatus.ABORTED:
                yield _Common.ResultReply(error=await self._task_error(result))
                return
            stored = self._backend.read_result(session_id, key)  # completed since
            first = await anext(stored, None)
        if first is not None:
            for reply in self._data_replies(first):
                yield reply
            async for chunk in stored:
                for reply in self._data_replies(chunk):
                    yield reply
        yield _DATA_COMPLETE

    def _data_replies(self, stored: bytes) -> Iterator[_Common.ResultReply]:
        # Stored chunks were cut by whoever wrote them; the client gets ours.
        for chunk in iter_chunks(stored, self._config.data_chunk_max_size):
            yield _Common.ResultReply(result=objects_pb2.DataChunk(data=chunk))

    async def _wait_for_availability(
        self, request: objects_pb2.ResultRequest, context: _Context
    ) -> _Common.AvailabilityReply:
        await self._scope(context).require(
            _required(request.session, "ResultRequest.session")
        )

        async def available() -> _Common.AvailabilityReply | None:
            result = await self._result(request)
            if result.status == ResultStatus.COMPLETED:
                return _Common.AvailabilityReply(ok=objects_pb2.Empty())
            if result.status == ResultStatus.ABORTED:
                return _Common.AvailabilityReply(error=await self._task_error(result))
            return None

        return await wait_until(self._backend, self._config, available)

    async def _task_error(self, result: ResultRecord) -> objects_pb2.TaskError:
        """Why an aborted result has no data: the status of the task that owned it."""
        task = await self._backend.get_task(result.owner_task_id)
        error = objects_pb2.Error(
            task_status=_task_status(task.status), detail=_ending(task)
        )
        return objects_pb2.TaskError(task_id=task.task_id, errors=[error])


# -- conversions ------------------------------------------------------------------


def _required(value: str, name: str) -> str:
    if not value:
        invalid(f"{name} is empty")
    return value


def _check_options(options: objects_pb2.TaskOptions, name: str) -> None:
    if options.max_retries < 0:
        invalid(f"{name}.max_retries must not be negative, not {options.max_retries}")
    if not options.HasField("max_duration"):
        return
    duration = options.max_duration
    try:
        # An agent reads it as a timedelta: one too long to be one would fail every
        # attempt of the task.
        span = duration.ToTimedelta()
    except OverflowError:
        invalid(f"{name}.max_duration of {duration.seconds} seconds is too long")
    if duration.seconds < 0 or duration.nanos < 0:
        invalid(f"{name}.max_duration must not be negative, not {span}")


def _given_options(message: Any, name: str) -> objects_pb2.TaskOptions | None:
    """The message's task options, checked; None when it sets none."""
    if not message.HasField(name):
        return None
    options: objects_pb2.TaskOptions = getattr(message, name)
    _check_options(options, name)
    return options


def _check_partitions(
    options: objects_pb2.TaskOptions, partitions: Sequence[str]
) -> None:
    for index, partition in enumerate(partitions):
        if not partition:
            invalid(f"partition_ids[{index}] is empty")
    if partitions and options.partition_id and options.partition_id not in partitions:
        invalid(
            f"default_task_option.partition_id {options.partition_id!r} is not one "
            f"of the session's partition_ids {list(partitions)}"
        )


def _known_statuses(values: Iterable[int], known: frozenset[int]) -> tuple[int, ...]:
    # Statuses this grid never gives (UNSPECIFIED, PROCESSED) select nothing.
    return tuple(value for value in values if value in known)


def _task_query(task_filter: _Common.TaskFilter) -> TaskQuery | None:
    """The query of a TaskFilter; None when it can select no task.

    A filter without ids selects every task; one naming an empty list of sessions
    or tasks selects none.
    """
    ids = task_filter.WhichOneof("ids")
    if ids is not None and not getattr(task_filter, ids).ids:
        return None
    which = task_filter.WhichOneof("statuses")
    included = task_filter.included.statuses if which == "included" else []
    excluded = task_filter.excluded.statuses if which == "excluded" else []
    statuses = _known_statuses(included, _TASK_STATUSES)
    if included and not statuses:
        return None
    return TaskQuery(
        session_ids=tuple(task_filter.session.ids) if ids == "session" else (),
        task_ids=tuple(task_filter.task.ids) if ids == "task" else (),
        statuses=tuple(TaskStatus(s) for s in statuses),
        excluded_statuses=tuple(
            TaskStatus(s) for s in _known_statuses(excluded, _TASK_STATUSES)
        ),
    )


def _session_query(session_filter: _Common.SessionFilter) -> SessionQuery | None:
    """The query of a SessionFilter; None when it can select no session."""
    which = session_filter.WhichOneof("statuses")
    included = session_filter.included.statuses if which == "included" else []
    excluded = session_filter.excluded.statuses if which == "excluded" else []
    statuses = _known_statuses(included, _SESSION_STATUSES)
    if included and not statuses:
        return None
    return SessionQuery(
        session_ids=tuple(session_filter.sessions),
        statuses=tuple(SessionStatus(s) for s in statuses),
        excluded_statuses=tuple(
            SessionStatus(s) for s in _known_statuses(excluded, _SESSION_STATUSES)
        ),
    )


def _task_status(status: TaskStatus) -> task_status_pb2.TaskStatus.ValueType:
    return task_status_pb2.TaskStatus.ValueType(status)


def _result_status(status: ResultStatus) -> result_status_pb2.ResultStatus.ValueType:
    return result_status_pb2.ResultStatus.ValueType(status)


def _count(counts: Mapping[TaskStatus, int]) -> objects_pb2.Count:
    return objects_pb2.Count(
        values=[
            objects_pb2.StatusCount(status=_task_status(status), count=count)
            for status, count in sorted(counts.items())
        ]
    )


def _ending(task: TaskRecord) -> str:
    return task.status_message or f"task {task.task_id} ended {task.status.name}"


def _creation_status(item: TaskRecord | TaskRefusal) -> _Reply.CreationStatus:
    if isinstance(item, TaskRefusal):
        return _Reply.CreationStatus(error=item.reason)
    info = _Reply.TaskInfo(
        task_id=item.task_id,
        expected_output_keys=item.expected_outputs,
        data_dependencies=item.data_dependencies,
    )
    return _Reply.CreationStatus(task_info=info)


async def _discard(backend: Backend, payloads: Sequence[BlobRef]) -> None:
    """Delete payloads that no task took; a failure only leaves them behind."""
    try:
        await asyncio.shield(backend.discard_blobs(p.blob_id for p in payloads))
    except BackendError:
        logger.warning("cannot delete %d unused payloads", len(payloads), exc_info=True)
