"""The Redis backend (needs the ``redis`` extra)."""

from __future__ import annotations

from agent.backend._redis._backend import RedisBackend

__all__ = ["RedisBackend"]
