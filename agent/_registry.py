"""The attempts running on this agent's worker, found by their communication token."""

from __future__ import annotations

from dataclasses import dataclass

from agent.backend import Attempt

__all__ = ["AttemptRegistry"]


@dataclass
class AttemptRegistry:
    """Tokens are valid from the moment an attempt is handed to the worker until
    it ends; the Agent service refuses every other token."""

    _by_token: dict[str, Attempt]

    def __init__(self) -> None:
        self._by_token = {}

    def add(self, attempt: Attempt) -> None:
        self._by_token[attempt.token] = attempt

    def remove(self, attempt: Attempt) -> None:
        self._by_token.pop(attempt.token, None)

    def get(self, token: str) -> Attempt | None:
        return self._by_token.get(token) if token else None

    def __len__(self) -> int:
        return len(self._by_token)
