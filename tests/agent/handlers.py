"""Kernels that the agent's end-to-end tests run on a real worker."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import grpc

from gridpod_api import agent_common_pb2, agent_service_pb2_grpc, objects_pb2
from worker_sdk import (
    Address,
    Task,
    TaskCreationRefused,
    TaskDefinition,
    TaskHandler,
    TaskOptions,
    kernel,
)


def _kernel(name: str) -> TaskOptions:
    return TaskOptions(options={"kernel": name})


class Grid(TaskHandler):
    @kernel
    def echo(self, task: Task) -> bytes:
        return bytes(task.payload)

    @kernel
    def concat(self, task: Task) -> bytes:
        """The payload, then each data dependency in the order the task lists them."""
        deps = task.data_dependencies
        return bytes(task.payload) + b"".join(bytes(deps[k]) for k in deps)

    @kernel
    def size(self, task: Task) -> bytes:
        return str(len(task.payload)).encode()

    @kernel("fail-once")
    def fail_once(self, task: Task) -> bytes:
        """Fails the first time: the payload names a marker file it creates."""
        marker = Path(bytes(task.payload).decode())
        if not marker.exists():
            marker.write_text(task.task_id)
            raise RuntimeError("first attempt fails")
        return b"second attempt"

    @kernel("always-fail")
    def always_fail(self, task: Task) -> bytes:
        raise ValueError(f"attempt on {task.task_id} fails")

    @kernel
    async def sleep(self, task: Task) -> bytes:
        await asyncio.sleep(float(bytes(task.payload).decode()))
        return b"slept"

    @kernel("block-once")
    def block_once(self, task: Task) -> bytes:
        """Blocks for a minute the first time (to be killed), answers the next."""
        marker = Path(bytes(task.payload).decode())
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(60)
        return b"survived"

    @kernel
    async def delegate(self, task: Task) -> None:
        """Hands its only output to a subtask that echoes the payload doubled."""
        doubled = bytes(task.payload) * 2
        await task.create_tasks(
            [TaskDefinition(payload=doubled, expected_outputs=task.expected_outputs)],
            options=_kernel("echo"),
        )

    @kernel
    async def divide(self, task: Task) -> bytes | None:
        """Sums the integers in [low, high): halves until a range has 2 numbers,
        then a gather subtask adds the halves and takes over the output."""
        if bytes(task.payload) == b"add":
            values = [int(bytes(v).decode()) for v in task.data_dependencies.values()]
            return str(sum(values)).encode()
        low, high = (int(x) for x in bytes(task.payload).decode().split(","))
        if high - low <= 2:
            return str(sum(range(low, high))).encode()
        middle = (low + high) // 2
        output = task.expected_outputs[0]
        left, right = f"{output}/left", f"{output}/right"
        halves = [
            TaskDefinition(payload=f"{low},{middle}".encode(), expected_outputs=[left]),
            TaskDefinition(
                payload=f"{middle},{high}".encode(), expected_outputs=[right]
            ),
        ]
        gather = TaskDefinition(
            payload=b"add", expected_outputs=[output], data_dependencies=[left, right]
        )
        # One request, so the gather task may depend on outputs of its siblings; the
        # payload "add" is read by the same kernel as the ranges.
        await task.create_tasks([*halves, gather], options=_kernel("divide"))
        return None

    @kernel("steal")
    def steal(self, task: Task) -> bytes:
        """Tries to write a result it does not own, named by the payload."""
        task.send_result(bytes(task.payload).decode(), b"stolen")
        return b"unreachable"

    @kernel("resource")
    def resource(self, task: Task) -> bytes:
        return bytes(task.get_resource_data(bytes(task.payload).decode()))

    @kernel("common")
    def common(self, task: Task) -> bytes:
        return bytes(task.get_common_data(bytes(task.payload).decode()))

    @kernel
    async def violate(self, task: Task) -> None:
        """Calls the agent with broken streams under its own token, then reports
        the status codes it got as output ``codes`` and sends ``partial`` cleanly."""
        channel = grpc.aio.insecure_channel(
            Address.parse(os.environ["GRIDPOD_TEST_AGENT"]).grpc_target
        )
        stub = agent_service_pb2_grpc.AgentStub(channel)
        token = task._token
        result, chunk = agent_common_pb2.Result, objects_pb2.DataChunk
        keyed = objects_pb2.InitKeyedDataStream
        create = agent_common_pb2.CreateTaskRequest
        broken_streams: list[tuple[Any, list[Any]]] = [
            # data before init
            (
                stub.SendResult,
                [result(communication_token=token, data=chunk(data=b"x"))],
            ),
            # the stream ends inside a result
            (
                stub.SendResult,
                [
                    result(communication_token=token, init=keyed(key="partial")),
                    result(communication_token=token, data=chunk(data=b"dirty")),
                ],
            ),
            # no init_request first
            (
                stub.CreateTask,
                [
                    create(
                        communication_token=token,
                        init_task=objects_pb2.InitTaskRequest(last_task=True),
                    )
                ],
            ),
        ]
        codes = []
        for method, messages in broken_streams:
            try:
                await method(iter(messages))
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                codes.append(error.code().name)
        await channel.close()
        await task.send_result("partial", b"clean")
        await task.send_result("codes", "|".join(codes).encode())

    @kernel("send-then-delegate")
    async def send_then_delegate(self, task: Task) -> None:
        """Sends ``out``, then tries to hand it to a subtask; reports the refusal."""
        await task.send_result("out", b"mine")
        try:
            await task.create_tasks(
                [TaskDefinition(payload=b"", expected_outputs=["out"])]
            )
        except TaskCreationRefused as error:
            await task.send_result("why", str(error).encode())
        else:
            await task.send_result("why", b"accepted")
