"""The client: ``python -m samples.pi [--tasks N] [--points M] [--address ADDR]``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from samples._launch import control_plane_address, in_local_grid
from worker_sdk import TaskOptions
from worker_sdk.client import Client, TaskSpec


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m samples.pi")
    parser.add_argument("--tasks", type=int, default=16, help="sampling tasks")
    parser.add_argument("--points", type=int, default=200_000, help="per task")
    parser.add_argument("--workers", type=int, default=2, help="in a local grid")
    parser.add_argument("--address", help="a running control plane (host:port)")
    return parser.parse_args()


def estimate(address: str, tasks: int, points: int) -> dict[str, float]:
    with Client(address) as client:
        session = client.create_session(TaskOptions(max_retries=2))
        samples = session.submit(
            [
                TaskSpec(json.dumps({"sample": n, "points": points}).encode())
                for n in range(tasks)
            ],
            TaskOptions(options={"kernel": "sample"}),
        )
        (gather,) = session.submit(
            [TaskSpec(b"", data_dependencies=[task.output for task in samples])],
            TaskOptions(options={"kernel": "gather"}),
        )
        session.wait_for_results([gather.output])
        figures: dict[str, float] = json.loads(session.result(gather.output))
        return figures


def main() -> None:
    arguments = _arguments()
    address = control_plane_address(arguments.address)
    if address is None:
        in_local_grid(
            "samples.pi",
            "samples.pi.kernels:MonteCarloPi",
            sys.argv[1:],
            arguments.workers,
        )
        return
    started = time.monotonic()
    figures = estimate(address, arguments.tasks, arguments.points)
    print(
        f"pi ~ {figures['pi']:.6f} from {int(figures['points']):,} points "
        f"in {arguments.tasks} tasks ({time.monotonic() - started:.2f} s)"
    )


if __name__ == "__main__":
    main()
