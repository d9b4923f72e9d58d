"""The attempts running on this agent's worker, found by their communication token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.backend import Attempt

__all__ = ["AttemptRegistry", "Running"]


@dataclass(eq=False)
class Running:
    """An attempt handed to the worker, and what the agent holds for it."""

    attempt: Attempt
    # Small results the worker sent, kept here and stored by the commit itself:
    # a task's whole commit, its results included, is then one transaction.
    results: dict[str, bytes] = field(default_factory=dict)
    # Expected outputs the attempt handed over to subtasks it created.
    delegated: set[str] = field(default_factory=set)
    # Called each time the Agent service accepts a result the worker sent for it.
    on_answer: Callable[[], None] | None = None

    def answered(self) -> None:
        """The Agent service accepted a result the worker sent for the attempt."""
        if self.on_answer is not None:
            self.on_answer()

    def owns(self, key: str) -> bool:
        return key in self.attempt.task.expected_outputs and key not in self.delegated


class AttemptRegistry:
    """Tokens are valid from the moment an attempt is handed to the worker until
    its Process call ends; the Agent service refuses every other token."""

    def __init__(self) -> None:
        self._by_token: dict[str, Running] = {}

    def add(self, attempt: Attempt) -> Running:
        running = Running(attempt)
        self._by_token[attempt.token] = running
        return running

    def remove(self, attempt: Attempt) -> Running | None:
        return self._by_token.pop(attempt.token, None)

    def get(self, token: str) -> Running | None:
        return self._by_token.get(token) if token else None
