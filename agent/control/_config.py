"""Configuration of one control plane."""

from __future__ import annotations

from dataclasses import dataclass

from agent.control._policy import AuthConfig
from worker_sdk._address import ServerTls

__all__ = ["ControlPlaneConfig"]


@dataclass(frozen=True, kw_only=True)
class ControlPlaneConfig:
    """How a control plane serves its clients."""

    # Chunk size of result streams, and what GetServiceConfiguration announces.
    data_chunk_max_size: int = 84_000
    # While changes keep coming, a wait or a watch reads the state again this often
    # on average, a few times at once after a quiet time; an idle one wakes at the
    # first change.
    requery_interval: float = 0.005
    # A call with one answer to give (WaitForCompletion, WaitForAvailability) that
    # has waited t seconds reads the state again at most every t times this, if
    # longer: it answers late by this share of its wait at most, and a long wait
    # over a busy grid costs little.
    requery_share: float = 0.01
    # A waiting call reads the state again after this long even with no wake-up,
    # in case one was missed.
    safety_poll: float = 1.0
    # The largest page a listing serves: bigger requests are refused rather than
    # answered with one message of unbounded size.
    max_page_size: int = 10_000
    # Bounds on what one client may make the control plane store or hold, each
    # refused with RESOURCE_EXHAUSTED naming it: a task's payload in bytes, the
    # tasks of one request, a task's data dependencies and expected outputs, and
    # the streams open at once from one client address (a host, not a port).
    max_payload_size: int = 1 << 30
    max_tasks_per_request: int = 10_000
    max_data_dependencies: int = 10_000
    max_expected_outputs: int = 10_000
    max_streams_per_client: int = 256
    # TLS of a TCP listener; None serves plaintext. A ``client_ca`` turns
    # authentication on: every client presents a certificate from that CA, whose
    # subject CN or a SAN names the user.
    tls: ServerTls | None = None
    # The roles of each user and the permissions of each role, with
    # authentication on; None grants every user a certificate names every
    # permission.
    auth: AuthConfig | None = None

    @property
    def authenticates(self) -> bool:
        """Whether clients are users named by their certificates."""
        return self.tls is not None and self.tls.client_ca is not None

    def __post_init__(self) -> None:
        if self.auth is not None and not self.authenticates:
            raise ValueError(
                "a permissions file needs client certificates to tell users "
                "apart: give TLS a client CA too"
            )
        if self.data_chunk_max_size < 1:
            raise ValueError(
                f"data_chunk_max_size must be positive, not {self.data_chunk_max_size}"
            )
        for name in ("requery_interval", "safety_poll"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 <= self.requery_share < 1:
            raise ValueError(
                f"requery_share must be from 0 to less than 1, not {self.requery_share}"
            )
        for name in (
            "max_page_size",
            "max_payload_size",
            "max_tasks_per_request",
            "max_data_dependencies",
            "max_expected_outputs",
            "max_streams_per_client",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
