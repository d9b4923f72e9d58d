"""The worker side: ``python -m worker_sdk samples.divide.kernels:SumOfSquares``."""

from __future__ import annotations

import json

from worker_sdk import Task, TaskDefinition, TaskHandler, TaskOptions, kernel

__all__ = ["SumOfSquares"]

_ADD = TaskOptions(options={"kernel": "add"})
_SPLIT = TaskOptions(options={"kernel": "split"})


class SumOfSquares(TaskHandler):
    @kernel
    async def split(self, task: Task) -> bytes | None:
        """The sum of squares over [low, high): at once if the range is at most
        ``leaf`` long, otherwise by two subtasks and a third that adds them."""
        request = json.loads(bytes(task.payload))
        low, high, leaf = request["low"], request["high"], request["leaf"]
        if high - low <= leaf:
            return str(sum(n * n for n in range(low, high))).encode()
        middle = (low + high) // 2
        (output,) = task.expected_outputs
        halves = [f"{output}/{low}-{middle}", f"{output}/{middle}-{high}"]
        await task.create_tasks(
            [
                TaskDefinition(
                    json.dumps({"low": a, "high": b, "leaf": leaf}).encode(),
                    expected_outputs=[key],
                )
                for key, (a, b) in zip(
                    halves, [(low, middle), (middle, high)], strict=True
                )
            ],
            options=_SPLIT,
        )
        # Listing this task's own output hands it over to the new task.
        await task.create_tasks(
            [TaskDefinition(b"", expected_outputs=[output], data_dependencies=halves)],
            options=_ADD,
        )
        return None

    @kernel
    def add(self, task: Task) -> bytes:
        return str(sum(int(bytes(v)) for v in task.data_dependencies.values())).encode()
