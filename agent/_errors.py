"""The root of the agent package's exceptions.

AgentError
 └── BackendError       agent.backend: NotFound, SessionCancelled, LeaseLost,
                        TaskCancelled, InvalidToken, NotOwned, NotCompleted,
                        MissingOutputs
"""

from __future__ import annotations

__all__ = ["AgentError"]


class AgentError(Exception):
    """Base of every error raised by the agent package."""
