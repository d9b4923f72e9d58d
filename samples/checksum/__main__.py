"""The client: ``python -m samples.checksum [--mib N] [--address ADDR]``."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator

from samples._launch import control_plane_address, in_local_grid
from worker_sdk.client import Client, TaskSpec

_MIB = 1024 * 1024


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m samples.checksum")
    parser.add_argument("--mib", type=int, default=512, help="payload size in MiB")
    parser.add_argument("--address", help="a running control plane (host:port)")
    return parser.parse_args()


class GeneratedPayload:
    """``mib`` MiB of varied bytes, made a chunk at a time and hashed on the way."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for n in range(self.mib):
            # Each MiB differs, so a lost or repeated chunk changes the digest.
            chunk = n.to_bytes(8, "little") * (_MIB // 8)
            self.digest.update(chunk)
            yield chunk


def checksum(address: str, mib: int) -> tuple[str, str]:
    """The payload's digest as computed here, and as the grid's task computed it."""
    payload = GeneratedPayload(mib)
    with Client(address) as client:
        session = client.create_session()
        (task,) = session.submit([TaskSpec(payload)])
        session.wait_for_results([task.output])
        remote, size = session.result(task.output).decode().split()
    if int(size) != mib * _MIB:
        return payload.digest.hexdigest(), f"{remote} (of {size} bytes)"
    return payload.digest.hexdigest(), remote


def main() -> None:
    arguments = _arguments()
    address = control_plane_address(arguments.address)
    if address is None:
        in_local_grid(
            "samples.checksum",
            "samples.checksum.kernels:Checksum",
            sys.argv[1:],
            workers=1,
        )
        return
    started = time.monotonic()
    local, remote = checksum(address, arguments.mib)
    elapsed = time.monotonic() - started
    verdict = "match" if local == remote else f"MISMATCH: the task computed {remote}"
    print(
        f"sha256 of {arguments.mib} MiB: {local} ({verdict}), "
        f"{elapsed:.2f} s, {arguments.mib / elapsed:.0f} MiB/s"
    )
    if local != remote:
        sys.exit(1)


if __name__ == "__main__":
    main()
