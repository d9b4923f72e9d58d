"""Reading one ``Worker.Process`` request stream into a complete task input.

The grammar, every message carrying the task's communication token:

    init_request (payload: first chunk, possibly empty or unset)
    payload{data}*  payload{data_complete}
    ( init_data{key}  data{data}+  data{data_complete} )*
    init_data{last_data}

Any chunking is accepted, including a payload that is complete inside init_request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gridpod_api import objects_pb2, worker_common_pb2
from worker_sdk._data import DEFAULT_SPILL_THRESHOLD, DataSink
from worker_sdk._errors import ProtocolError

ComputeRequest = worker_common_pb2.ProcessRequest.ComputeRequest

# A first chunk up to this size may stay in init_request beside its copy.
_SMALL_FIRST_CHUNK = 64 * 1024


@dataclass
class TaskInput:
    """Everything the agent streamed for one task."""

    token: str
    init: ComputeRequest.InitRequest
    payload: memoryview
    data_dependencies: dict[str, memoryview]
    sinks: list[DataSink] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for sink in self.sinks:
            sink.close()


def _describe(compute: ComputeRequest) -> str:
    kind = compute.WhichOneof("type")
    if kind is None:
        return "a ProcessRequest with no compute message"
    inner = (
        getattr(compute, kind).WhichOneof("type") if kind != "init_request" else None
    )
    return f"compute.{kind}" + (f".{inner}" if inner else "")


def _without_payload(init: ComputeRequest.InitRequest) -> ComputeRequest.InitRequest:
    # A fresh message, so that a large first payload chunk is not kept alive twice:
    # once in the payload's sink and once in the arena of the request that carried it.
    if init.payload.ByteSize() <= _SMALL_FIRST_CHUNK:
        return init
    copy = ComputeRequest.InitRequest(
        session_id=init.session_id,
        task_id=init.task_id,
        expected_output_keys=init.expected_output_keys,
    )
    copy.configuration.CopyFrom(init.configuration)
    copy.task_options.CopyFrom(init.task_options)
    return copy


def _take_first_chunk(chunk: objects_pb2.DataChunk, sink: DataSink) -> bool:
    """Write init_request's payload chunk; True if it already completes the payload."""
    if chunk.WhichOneof("type") == "data_complete":
        return chunk.data_complete
    sink.write(chunk.data)
    return False


class _Reader:
    def __init__(
        self,
        requests: AsyncIterator[worker_common_pb2.ProcessRequest],
        spill_threshold: int,
        spill_dir: str | None,
    ) -> None:
        self._requests = requests
        self._spill = (spill_threshold, spill_dir)
        self._token: str | None = None
        self.sinks: list[DataSink] = []

    async def next(self, expecting: str) -> ComputeRequest:
        try:
            request = await anext(self._requests)
        except StopAsyncIteration:
            raise ProtocolError(
                f"the Process stream ended while expecting {expecting}"
            ) from None
        if self._token is None:
            self._token = request.communication_token
        elif request.communication_token != self._token:
            raise ProtocolError(
                f"{_describe(request.compute)} carries another communication "
                "token than compute.init_request"
            )
        return request.compute

    def sink(self) -> DataSink:
        sink = DataSink(*self._spill)
        self.sinks.append(sink)
        return sink

    async def read(self) -> TaskInput:
        first = await self.next("compute.init_request")
        if first.WhichOneof("type") != "init_request":
            raise ProtocolError(
                f"expected compute.init_request first, got {_describe(first)}"
            )
        init = _without_payload(first.init_request)
        sink = self.sink()
        complete = _take_first_chunk(first.init_request.payload, sink)
        del first  # drop the request's own copy of the first chunk
        payload = sink.view() if complete else await self._read_payload(sink)
        dependencies = await self._read_dependencies()
        assert self._token is not None
        return TaskInput(self._token, init, payload, dependencies, self.sinks)

    async def _read_payload(self, sink: DataSink) -> memoryview:
        while True:
            compute = await self.next("compute.payload")
            if compute.WhichOneof("type") != "payload":
                raise ProtocolError(
                    f"expected compute.payload, got {_describe(compute)} "
                    "before the payload's data_complete"
                )
            chunk = compute.payload
            if chunk.WhichOneof("type") == "data":
                sink.write(chunk.data)
            elif chunk.data_complete:
                return sink.view()
            else:
                raise ProtocolError(
                    "compute.payload holds neither data nor data_complete"
                )

    async def _read_dependencies(self) -> dict[str, memoryview]:
        dependencies: dict[str, memoryview] = {}
        while True:
            compute = await self.next("compute.init_data")
            if compute.WhichOneof("type") != "init_data":
                raise ProtocolError(
                    f"expected compute.init_data, got {_describe(compute)}"
                )
            init_data = compute.init_data
            if init_data.WhichOneof("type") == "last_data" and init_data.last_data:
                return dependencies
            if init_data.WhichOneof("type") != "key":
                raise ProtocolError("compute.init_data holds neither key nor last_data")
            if init_data.key in dependencies:
                raise ProtocolError(
                    f"data dependency {init_data.key!r} is sent twice in one stream"
                )
            dependencies[init_data.key] = await self._read_dependency(init_data.key)

    async def _read_dependency(self, key: str) -> memoryview:
        sink = self.sink()
        chunks = 0
        while True:
            compute = await self.next(f"compute.data of dependency {key!r}")
            if compute.WhichOneof("type") != "data":
                raise ProtocolError(
                    f"expected compute.data of dependency {key!r}, "
                    f"got {_describe(compute)}"
                )
            if compute.data.WhichOneof("type") == "data":
                sink.write(compute.data.data)
                chunks += 1
            elif compute.data.data_complete:
                if chunks == 0:
                    raise ProtocolError(
                        f"dependency {key!r} completed without any compute.data chunk "
                        "(an empty dependency is one zero-length chunk)"
                    )
                return sink.view()
            else:
                raise ProtocolError("compute.data holds neither data nor data_complete")

    async def expect_end(self) -> None:
        """Fail if anything follows init_data.last_data."""
        try:
            extra = await anext(self._requests)
        except StopAsyncIteration:
            return
        raise ProtocolError(
            f"{_describe(extra.compute)} after compute.init_data.last_data"
        )


async def read_task(
    requests: AsyncIterator[worker_common_pb2.ProcessRequest],
    spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
    spill_dir: str | None = None,
) -> tuple[TaskInput, _Reader]:
    """Read up to init_data.last_data; the reader then checks the stream's end."""
    reader = _Reader(requests, spill_threshold, spill_dir)
    try:
        return await reader.read(), reader
    except BaseException:
        for sink in reader.sinks:
            sink.close()
        raise
