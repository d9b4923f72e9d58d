"""The worker server: ``Worker.Process`` and ``Worker.HealthCheck`` over grpc.aio."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc

from gridpod_api import objects_pb2, worker_common_pb2, worker_service_pb2_grpc
from worker_sdk import _metrics
from worker_sdk._address import (
    DEFAULT_AGENT_ADDRESS,
    DEFAULT_WORKER_ADDRESS,
    Address,
    ChannelTls,
    ServerTls,
)
from worker_sdk._agent import CHANNEL_OPTIONS, AgentClient, AgentPort
from worker_sdk._data import DEFAULT_CHUNK_SIZE, DEFAULT_SPILL_THRESHOLD
from worker_sdk._errors import ProtocolError
from worker_sdk._handler import TaskHandler
from worker_sdk._listen import listen, new_server
from worker_sdk._process import read_task
from worker_sdk._runner import Outcome, Runner

logger = logging.getLogger(__name__)

_Serving = worker_common_pb2.HealthCheckReply.ServingStatus
_Context = grpc.aio.ServicerContext[Any, Any]

# How long a finished task waits for the agent to close its Process stream.
_HALF_CLOSE_WAIT = 10.0
# The details of the UNAVAILABLE with which a draining worker turns a task away
# before running anything of it: an agent of ours releases the task, which then
# costs no retry.
DRAINING_DETAILS = "the worker is draining"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """How a worker server listens, reaches its agent and holds data."""

    address: Address = field(
        default_factory=lambda: Address.parse(DEFAULT_WORKER_ADDRESS)
    )
    agent_address: Address = field(
        default_factory=lambda: Address.parse(DEFAULT_AGENT_ADDRESS)
    )
    # TLS of the Worker service, and what the channel to the agent trusts; used
    # on TCP only (unix sockets stay plaintext). None: plaintext.
    tls: ServerTls | None = None
    agent_tls: ChannelTls | None = None
    # Threads that run plain (non-async) kernels and hooks.
    kernel_threads: int = 8
    spill_threshold: int = DEFAULT_SPILL_THRESHOLD
    spill_dir: str | None = None
    # Chunk size for results and subtask payloads when the agent announces none.
    default_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.kernel_threads < 1:
            raise ValueError(
                f"kernel_threads must be at least 1: {self.kernel_threads}"
            )
        if self.spill_threshold < 0:
            raise ValueError(
                f"spill_threshold must not be negative: {self.spill_threshold}"
            )


def _reply(token: str, outcome: Outcome) -> worker_common_pb2.ProcessReply:
    output = objects_pb2.Output()
    if outcome.error is None:
        output.ok.SetInParent()
    else:
        output.error.details = outcome.error
    return worker_common_pb2.ProcessReply(communication_token=token, output=output)


class WorkerServer(worker_service_pb2_grpc.WorkerServicer):
    """Serves one ``TaskHandler``; ``run()`` serves until ``drain()`` is called."""

    def __init__(
        self,
        handler: TaskHandler,
        config: WorkerConfig | None = None,
        agent: AgentPort | None = None,
    ) -> None:
        self.config = config or WorkerConfig()
        self._executor = ThreadPoolExecutor(
            self.config.kernel_threads, thread_name_prefix="kernel"
        )
        self._agent_client = (
            AgentClient(
                self.config.agent_address,
                self.config.spill_threshold,
                self.config.spill_dir,
                tls=self.config.agent_tls,
            )
            if agent is None
            else None
        )
        self._runner = Runner(
            handler,
            agent or self._agent_client,  # type: ignore[arg-type]
            self._executor,
            self.config.default_chunk_size,
        )
        self._server: grpc.aio.Server | None = None
        self._draining = False
        self._drain_requested = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        _metrics.IN_FLIGHT.set_function(lambda: self._in_flight)
        self.port: int | None = None

    async def start(self) -> None:
        """Run the handler's on_start hook, then bind and start accepting tasks."""
        await self._runner.call_hook(self._runner.handler.on_start)
        server = new_server(CHANNEL_OPTIONS)
        worker_service_pb2_grpc.add_WorkerServicer_to_server(self, server)
        address = self.config.address
        self.port = await listen(server, address, self.config.tls)
        self._server = server
        logger.info(
            "worker listening on %s, agent at %s", address, self.config.agent_address
        )

    def drain(self) -> None:
        """Stop accepting tasks; ``run()`` returns once the running ones are done."""
        if not self._draining:
            logger.info("draining: %d task(s) still running", self._in_flight)
        self._draining = True
        self._drain_requested.set()

    async def run(self) -> None:
        await self.start()
        try:
            await self._drain_requested.wait()
            await self._idle.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        self._draining = True
        if self._server is not None:
            await self._server.stop(grace=1.0)
        try:
            await self._runner.leave_session()
            await self._runner.call_hook(self._runner.handler.on_stop)
        finally:
            if self._agent_client is not None:
                await self._agent_client.close()
            self._executor.shutdown(wait=False)
            if self.config.address.kind == "unix":
                Path(self.config.address.target).unlink(missing_ok=True)
        logger.info("worker stopped")

    async def HealthCheck(
        self, request: objects_pb2.Empty, context: _Context
    ) -> worker_common_pb2.HealthCheckReply:
        status = _Serving.NOT_SERVING if self._draining else _Serving.SERVING
        return worker_common_pb2.HealthCheckReply(status=status)

    async def Process(
        self,
        request_iterator: AsyncIterator[worker_common_pb2.ProcessRequest],
        context: _Context,
    ) -> worker_common_pb2.ProcessReply:
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS)
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._process(request_iterator, context)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _process(
        self,
        requests: AsyncIterator[worker_common_pb2.ProcessRequest],
        context: _Context,
    ) -> worker_common_pb2.ProcessReply:
        config = self.config
        try:
            task_input, reader = await read_task(
                requests, config.spill_threshold, config.spill_dir
            )
        except ProtocolError as error:
            await self._refuse(context, error)
        size = len(task_input.payload) + sum(
            len(v) for v in task_input.data_dependencies.values()
        )
        _metrics.BYTES_IN.inc(size)
        # Whatever follows last_data is a protocol error. Watch for it while the
        # kernel runs, and for the agent's half-close once it is done.
        trailing = asyncio.get_running_loop().create_task(reader.expect_end())
        try:
            outcome = await self._runner.run(task_input)
        except BaseException:
            trailing.cancel()
            raise
        finally:
            task_input.release()
        await self._check_end(trailing, context)
        return _reply(task_input.token, outcome)

    async def _check_end(
        self, trailing: asyncio.Future[None], context: _Context
    ) -> None:
        try:
            # Most agents have half-closed by now: no timer for those.
            if trailing.done():
                trailing.result()
            else:
                await asyncio.wait_for(trailing, _HALF_CLOSE_WAIT)
        except ProtocolError as error:
            await self._refuse(context, error)
        except asyncio.TimeoutError:
            # An agent that never half-closes still gets its reply, only later.
            logger.warning(
                "the agent did not close the Process stream within %.0fs of "
                "last_data; replying anyway",
                _HALF_CLOSE_WAIT,
            )

    async def _refuse(self, context: _Context, error: ProtocolError) -> NoReturn:
        logger.warning("Process stream refused: %s", error)
        _metrics.INVALID.inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        raise AssertionError("unreachable: abort raises")
