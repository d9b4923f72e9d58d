"""The worker side: ``python -m worker_sdk samples.pi.kernels:MonteCarloPi``."""

from __future__ import annotations

import json
import random

from worker_sdk import Task, TaskHandler, kernel

__all__ = ["MonteCarloPi"]


class MonteCarloPi(TaskHandler):
    @kernel
    def sample(self, task: Task) -> bytes:
        """Throw ``points`` darts at the unit square; how many land in the circle."""
        request = json.loads(bytes(task.payload))
        # Each sampling task draws its own stream of numbers, chosen by its index.
        draw = random.Random(request["sample"]).random
        inside = 0
        for _ in range(request["points"]):
            x, y = draw(), draw()
            inside += x * x + y * y <= 1.0
        return json.dumps({"inside": inside, "points": request["points"]}).encode()

    @kernel
    def gather(self, task: Task) -> bytes:
        """Pi from the counts of every sampling task, its data dependencies."""
        counts = [json.loads(bytes(data)) for data in task.data_dependencies.values()]
        inside = sum(count["inside"] for count in counts)
        points = sum(count["points"] for count in counts)
        return json.dumps({"pi": 4 * inside / points, "points": points}).encode()
