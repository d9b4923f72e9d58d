"""The client: ``python -m samples.divide [--high N] [--leaf M] [--address ADDR]``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from samples._launch import control_plane_address, in_local_grid
from worker_sdk import TaskOptions
from worker_sdk.client import Client, TaskSpec


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m samples.divide")
    parser.add_argument("--high", type=int, default=1_000_000, help="range end")
    parser.add_argument("--leaf", type=int, default=125_000, help="largest leaf")
    parser.add_argument("--workers", type=int, default=2, help="in a local grid")
    parser.add_argument("--address", help="a running control plane (host:port)")
    return parser.parse_args()


def sum_of_squares(address: str, high: int, leaf: int) -> tuple[int, int]:
    """The sum over [0, high) as the grid computed it, and the tasks it took."""
    with Client(address) as client:
        session = client.create_session(
            TaskOptions(max_retries=2, options={"kernel": "split"})
        )
        payload = json.dumps({"low": 0, "high": high, "leaf": leaf}).encode()
        (root,) = session.submit([TaskSpec(payload)])
        session.wait_for_results([root.output])
        total = int(session.result(root.output))
        session.wait()
        return total, len(session.list_tasks())


def main() -> None:
    arguments = _arguments()
    address = control_plane_address(arguments.address)
    if address is None:
        in_local_grid(
            "samples.divide",
            "samples.divide.kernels:SumOfSquares",
            sys.argv[1:],
            arguments.workers,
        )
        return
    started = time.monotonic()
    total, tasks = sum_of_squares(address, arguments.high, arguments.leaf)
    expected = sum(n * n for n in range(arguments.high))
    verdict = "correct" if total == expected else f"WRONG, expected {expected}"
    print(
        f"sum of squares below {arguments.high:,} = {total} ({verdict}), "
        f"{tasks} tasks in {time.monotonic() - started:.2f} s"
    )
    if total != expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
