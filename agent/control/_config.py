"""Configuration of one control plane."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ControlPlaneConfig"]


@dataclass(frozen=True, kw_only=True)
class ControlPlaneConfig:
    """How a control plane serves its clients."""

    # Chunk size of result streams, and what GetServiceConfiguration announces.
    data_chunk_max_size: int = 84_000
    # While changes keep coming, a wait or a watch reads the state again at most
    # this often; an idle one wakes at the first change.
    requery_interval: float = 0.005
    # A waiting call reads the state again after this long even with no wake-up,
    # in case one was missed.
    safety_poll: float = 1.0

    def __post_init__(self) -> None:
        if self.data_chunk_max_size < 1:
            raise ValueError(
                f"data_chunk_max_size must be positive, not {self.data_chunk_max_size}"
            )
