"""The floor the agent is measured against: the agent's two calls in bare grpc.aio.

``python bench/bare_agent.py --listen PATH --worker PATH --tasks N --report PATH``
serves SendResult on the unix socket PATH and calls ``Worker.Process`` N times on the
worker at ``--worker``, with the messages the agent sends, ``--concurrency`` calls in
flight; there is no backend. It then writes its figures to the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before grpc, so that this process runs gRPC with our processes' settings.
import worker_sdk._grpc_defaults  # noqa: F401  # isort: skip
import grpc
import uvloop

# Run as a script, this file's folder heads sys.path; the bench package is found
# from the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    CHANNEL_OPTIONS,
    TINY_PAYLOAD,
    BenchAgent,
    BenchError,
    agent_server,
    generated_chunks,
    output_key,
    task_messages,
    wait_serving,
)
from gridpod_api import worker_common_pb2, worker_service_pb2_grpc

_Request = worker_common_pb2.ProcessRequest


def streams(
    tasks: int, payload_bytes: int, chunk_size: int
) -> Iterator[Iterator[_Request]]:
    """One Process stream per task, built as it is sent, as the agent does."""
    for number in range(tasks):
        if payload_bytes:
            chunks: Iterator[bytes] = generated_chunks(payload_bytes, chunk_size)
        else:
            chunks = iter([TINY_PAYLOAD])
        yield task_messages(number, chunks, chunk_size)


async def run_calls(
    stub: worker_service_pb2_grpc.WorkerAsyncStub,
    pending: Iterator[Iterator[_Request]],
    concurrency: int,
) -> list[float]:
    """The latency of every call, ``concurrency`` callers sharing ``pending``."""
    latencies: list[float] = []

    async def caller() -> None:
        for messages in pending:
            started = time.perf_counter()
            reply = await stub.Process(messages, timeout=600.0)
            latencies.append(time.perf_counter() - started)
            if reply.output.WhichOneof("type") != "ok":
                raise BenchError(f"a task failed: {reply.output}")

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    agent = BenchAgent()
    target = f"unix:{args.worker}"
    async with (
        agent_server(args.listen, agent),
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel,
    ):
        stub = worker_service_pb2_grpc.WorkerStub(channel)
        await wait_serving(stub, "the worker", timeout=30.0)
        pending = streams(args.tasks, args.payload_bytes, args.chunk_size)
        started, cpu = time.perf_counter(), time.process_time()
        latencies = await run_calls(stub, pending, args.concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "latencies": latencies,
        "results": len(agent.results),
        "first_value": agent.results.get(output_key(0), b"").decode("latin-1"),
        "peak_rss": peak_rss(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=Path, required=True, help="unix socket")
    parser.add_argument("--worker", type=Path, required=True, help="unix socket")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--payload-bytes", type=int, default=0, help="0: a tiny payload"
    )
    parser.add_argument("--chunk-size", type=int, default=1024 * 1024)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    report = uvloop.run(run(args))
    args.report.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
