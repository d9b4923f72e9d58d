"""Load on the control plane: good clients with bad ones mixed in.

``python bench/load.py [--clients N] [--tasks M] [--bad-clients K] [--backend
sqlite|redis]`` starts a control plane and two pods over a fresh backend (on
Redis, a redis-server of its own), runs N good clients of M tasks each, in
batches of 10, beside K bad clients, then accounts for every task and result. It
prints the load held and the statuses the bad clients met, the problems found
last; it exits 1 if there were any. ``tests/load`` runs the same, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import sys
import tempfile
from pathlib import Path

# Run as a script, this file's folder heads sys.path, where this module's siblings
# would shadow the packages it measures: the repository's root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.load.scenario import LoadReport, LoadSizes, run_load
from tests.redis_server import RedisServer

BATCH_SIZE = 10
# The good clients' time, at least, and per task beyond: generous, so that only
# a stuck run hits it.
MIN_TIMEOUT = 120.0
TIMEOUT_PER_TASK = 0.2


def sizes(args: argparse.Namespace) -> LoadSizes:
    batch_size = min(BATCH_SIZE, args.tasks)
    batches = math.ceil(args.tasks / batch_size)
    return LoadSizes(
        clients=args.clients,
        batches=batches,
        batch_size=batch_size,
        bad_clients=args.bad_clients,
        pods=args.pods,
        timeout=max(MIN_TIMEOUT, TIMEOUT_PER_TASK * args.clients * args.tasks),
    )


async def run(backend: str, load: LoadSizes, folder: Path) -> LoadReport:
    if backend == "sqlite":
        return await run_load(f"sqlite://{folder / 'state.db'}", folder, load)
    with RedisServer(folder / "redis") as server:
        return await run_load(server.url(), folder, load)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="good clients")
    parser.add_argument(
        "--tasks", type=int, default=20, help="tasks of each good client"
    )
    parser.add_argument("--bad-clients", type=int, default=20)
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args(argv)
    for name in ("clients", "tasks", "pods"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.bad_clients < 0:
        parser.error("--bad-clients must not be negative")
    return args


def main() -> None:
    args = parse()
    # Short: the pods' unix sockets live in it.
    folder = Path(tempfile.mkdtemp(prefix="gridpod-load-"))
    report = asyncio.run(run(args.backend, sizes(args), folder))
    print(report.text())
    if report.problems:
        print(f"the processes' logs are in {folder}")
        sys.exit(1)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
