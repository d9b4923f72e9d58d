"""What a load run counts as it goes: the streams open at once, and the status of
every call a bad client made against the statuses it may get."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import grpc

# The statuses a refused call may get: each says what went wrong. UNKNOWN and
# INTERNAL would mean the control plane failed, UNAVAILABLE that it went away.
CLEAR = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


# gRPC's Python client reports INTERNAL, with these details, for a call whose
# request it was still writing when the call ended: the status the control plane
# sent is lost in the client, which records the call under this name instead.
WRITE_FAILED = "CLIENT_WRITE_FAILED"
_LOST_STATUS = "Internal error from Core"


def _lost_in_client(code: grpc.StatusCode, details: str, debug: str) -> bool:
    return (
        code == grpc.StatusCode.INTERNAL
        and details == _LOST_STATUS
        and "SendMessageOperation" in debug
    )


class Streams:
    """The streams that clients of the run hold open, and the most at once."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0

    @contextlib.contextmanager
    def held(self, count: int = 1) -> Iterator[None]:
        """Count ``count`` streams open while the block runs."""
        self.open += count
        self.peak = max(self.peak, self.open)
        try:
            yield
        finally:
            self.open -= count


@dataclass
class Tally:
    """The statuses the bad clients' calls got, by probe; a surprise is a status
    the probe may not get, with the details the control plane gave."""

    by_probe: Counter[tuple[str, str]] = field(default_factory=Counter)
    surprises: list[str] = field(default_factory=list)

    def record(
        self,
        probe: str,
        code: grpc.StatusCode,
        details: str,
        allowed: Collection[grpc.StatusCode],
        debug: str = "",
    ) -> None:
        if _lost_in_client(code, details, debug):
            self.by_probe[probe, WRITE_FAILED] += 1
            return
        self.by_probe[probe, code.name] += 1
        if code not in allowed:
            self.surprises.append(f"{probe}: {code.name}: {details[:300]} {debug}")

    @property
    def calls(self) -> int:
        return sum(self.by_probe.values())

    def by_code(self) -> Counter[str]:
        codes: Counter[str] = Counter()
        for (_, code), count in self.by_probe.items():
            codes[code] += count
        return codes
