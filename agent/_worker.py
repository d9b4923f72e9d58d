"""The agent's side of the worker channel: health checks and Process streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from agent import _metrics
from agent.backend import Attempt, Backend
from gridpod_api import objects_pb2, worker_common_pb2, worker_service_pb2_grpc
from worker_sdk import Address
from worker_sdk._address import ChannelTls, open_channel
from worker_sdk._agent import CHANNEL_OPTIONS
from worker_sdk._data import iter_chunks

logger = logging.getLogger(__name__)

_Compute = worker_common_pb2.ProcessRequest.ComputeRequest
_Serving = worker_common_pb2.HealthCheckReply.ServingStatus


# Seconds a call may wait, once its last request is written, for the worker's first
# result before it counts as settled anyway: a kernel that computes longer than
# this sends none soon.
HANDOVER_WAIT = 0.001


@dataclass(eq=False)
class Dispatch:
    """How far a Process call has got, each step resolving with True once reached
    or with False if the call ended first: ``begun`` once its first request is
    written, ``sent`` once the last is, ``settled`` once ``sent`` is and either
    the agent accepted a result the worker sent for the task or ``HANDOVER_WAIT``
    passed."""

    begun: asyncio.Future[bool]
    sent: asyncio.Future[bool]
    settled: asyncio.Future[bool]
    _answered: bool = field(default=False, init=False, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)

    @classmethod
    def new(cls) -> Dispatch:
        loop = asyncio.get_running_loop()
        dispatch = cls(loop.create_future(), loop.create_future(), loop.create_future())
        dispatch.sent.add_done_callback(dispatch._wait_for_worker)
        return dispatch

    def answered(self) -> None:
        """The agent accepted a result the worker sent for this task."""
        self._answered = True
        if self.sent.done():
            _resolve(self.settled, True)

    def ended(self) -> None:
        _resolve(self.begun, False)
        _resolve(self.sent, False)
        _resolve(self.settled, False)
        if self._timer is not None:
            self._timer.cancel()

    def _wait_for_worker(self, sent: asyncio.Future[bool]) -> None:
        if self.settled.done():
            return
        if self._answered:
            _resolve(self.settled, True)
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDOVER_WAIT, _resolve, self.settled, True)


def _resolve(step: asyncio.Future[bool], reached: bool) -> None:
    if not step.done():
        step.set_result(reached)


@dataclass
class TaskData:
    """A task's payload and data dependencies, when read ahead into memory."""

    payload: list[bytes] = field(default_factory=list)
    dependencies: dict[str, list[bytes]] = field(default_factory=dict)


class WorkerLink:
    """Talks to the one worker of the pod; over TLS when ``tls`` is given and the
    worker's address is TCP."""

    def __init__(
        self,
        address: Address,
        backend: Backend,
        chunk_size: int,
        tls: ChannelTls | None = None,
    ) -> None:
        self._channel = open_channel(address, tls, CHANNEL_OPTIONS)
        self._stub = worker_service_pb2_grpc.WorkerStub(self._channel)
        self._backend = backend
        self._chunk_size = chunk_size
        self.address = address

    async def close(self) -> None:
        await self._channel.close()

    async def is_healthy(self, timeout: float = 2.0) -> bool:
        """SERVING, or a worker that does not implement health checks at all."""
        try:
            reply = await self._stub.HealthCheck(objects_pb2.Empty(), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.UNIMPLEMENTED
        return bool(reply.status == _Serving.SERVING)

    async def wait_healthy(self, initial: timedelta, ceiling: timedelta) -> None:
        """Return once the worker is healthy, checking with exponential backoff."""
        delay = initial.total_seconds()
        while not await self.is_healthy():
            _metrics.WORKER_UP.set(0)
            logger.info(
                "worker at %s is not serving; next check in %.2fs", self.address, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, ceiling.total_seconds())
        _metrics.WORKER_UP.set(1)

    async def process(
        self,
        attempt: Attempt,
        data: TaskData | None,
        timeout: float | None,
        dispatch: Dispatch | None = None,
    ) -> worker_common_pb2.ProcessReply:
        """Run the attempt on the worker; raises grpc.aio.AioRpcError if the call
        fails, and the backend's error if the task's data cannot be read.

        ``dispatch`` follows the writing of the requests.
        """
        # Written here rather than handed over as an iterator, which grpc.aio would
        # drain from a task of its own.
        call = self._stub.Process(timeout=timeout)
        try:
            async for request in self._requests(attempt, data, dispatch):
                await call.write(request)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call ended before its last request: its status says why
        except BaseException:
            # The task's data could not be read, or the attempt is being stopped:
            # the worker must not wait for the rest of the stream.
            call.cancel()
            raise
        reply: worker_common_pb2.ProcessReply = await call
        return reply

    async def read_ahead(self, attempt: Attempt) -> TaskData:
        """Read the payload and data dependencies of ``attempt`` into memory."""
        task = attempt.task
        data = TaskData()
        async for chunk in self._backend.read_blob(task.payload.blob_id):
            data.payload.append(chunk)
        for key in task.data_dependencies:
            data.dependencies[key] = [
                c async for c in self._backend.read_result(task.session_id, key)
            ]
        return data

    async def _chunks(
        self, stored: AsyncIterator[bytes] | list[bytes]
    ) -> AsyncIterator[bytes]:
        if isinstance(stored, list):
            for chunk in stored:
                for piece in iter_chunks(chunk, self._chunk_size):
                    yield piece
            return
        async for chunk in stored:
            for piece in iter_chunks(chunk, self._chunk_size):
                yield piece

    def _payload_source(
        self, attempt: Attempt, data: TaskData | None
    ) -> AsyncIterator[bytes]:
        if data is not None:
            return self._chunks(data.payload)
        return self._chunks(self._backend.read_blob(attempt.task.payload.blob_id))

    def _dependency_source(
        self, attempt: Attempt, data: TaskData | None, key: str
    ) -> AsyncIterator[bytes]:
        if data is not None:
            return self._chunks(data.dependencies[key])
        return self._chunks(self._backend.read_result(attempt.task.session_id, key))

    async def _requests(
        self,
        attempt: Attempt,
        data: TaskData | None,
        dispatch: Dispatch | None,
    ) -> AsyncIterator[worker_common_pb2.ProcessRequest]:
        token = attempt.token
        task = attempt.task
        payload = self._payload_source(attempt, data)
        first = await anext(payload, None)
        init = _Compute.InitRequest(
            configuration=objects_pb2.Configuration(
                data_chunk_max_size=self._chunk_size
            ),
            session_id=task.session_id,
            task_id=task.task_id,
            task_options=task.options,
            expected_output_keys=task.expected_outputs,
        )
        # As the reference agent: the first chunk rides in init_request, and an
        # empty payload leaves that field unset.
        if first is not None:
            init.payload.data = first
        size = len(first or b"")
        yield _request(token, init_request=init)
        # Asked for the next request, the call has written the one before.
        if dispatch is not None:
            _resolve(dispatch.begun, True)
        async for chunk in payload:
            size += len(chunk)
            yield _request(token, payload=objects_pb2.DataChunk(data=chunk))
        yield _request(token, payload=objects_pb2.DataChunk(data_complete=True))
        for key in task.data_dependencies:
            yield _request(token, init_data=_Compute.InitData(key=key))
            empty = True
            async for chunk in self._dependency_source(attempt, data, key):
                empty = False
                size += len(chunk)
                yield _request(token, data=objects_pb2.DataChunk(data=chunk))
            if empty:
                yield _request(token, data=objects_pb2.DataChunk(data=b""))
            yield _request(token, data=objects_pb2.DataChunk(data_complete=True))
        yield _request(token, init_data=_Compute.InitData(last_data=True))
        _metrics.BYTES_TO_WORKER.inc(size)
        if dispatch is not None:
            _resolve(dispatch.sent, True)


def _request(token: str, **compute: object) -> worker_common_pb2.ProcessRequest:
    return worker_common_pb2.ProcessRequest(
        communication_token=token,
        compute=_Compute(**compute),  # type: ignore[arg-type]
    )
