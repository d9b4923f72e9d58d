"""Where the Redis backend keeps what (the layout is described in ``_backend``)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

__all__ = ["TAG_LENGTH", "Keys", "fresh_id", "tag_of"]

# A session's tasks, results and blobs share the first characters of the session's
# id, which is the hash tag of all their keys.
TAG_LENGTH = 8


def tag_of(identifier: str) -> str:
    return identifier[:TAG_LENGTH]


def fresh_id(tag: str | None = None) -> str:
    """A random UUID; with ``tag``, one whose first group is that tag."""
    text = str(uuid.uuid4())
    return text if tag is None else tag + text[TAG_LENGTH:]


def nonce() -> str:
    """What a transition makes its ids and its memo from: 20 random hex digits."""
    return secrets.token_hex(10)


@dataclass(frozen=True)
class Keys:
    prefix: str

    def base(self, identifier: str) -> str:
        """The base of the keys stored beside ``identifier`` (a session, task or
        blob id): the functions' KEYS[1]."""
        return f"{self.prefix}:{{{tag_of(identifier)}}}"

    def session(self, session_id: str) -> str:
        return f"{self.base(session_id)}:s:{session_id}"

    def task(self, task_id: str) -> str:
        return f"{self.base(task_id)}:t:{task_id}"

    def tasks(self, session_id: str) -> str:
        return f"{self.base(session_id)}:tasks:{session_id}"

    def result(self, session_id: str, key: str) -> str:
        return f"{self.base(session_id)}:r:{session_id}:{key}"

    def results(self, session_id: str) -> str:
        return f"{self.base(session_id)}:results:{session_id}"

    def queue(self, session_id: str, partition_id: str) -> str:
        return f"{self.base(session_id)}:q:{session_id}:{partition_id}"

    def events(self, session_id: str) -> str:
        return f"{self.base(session_id)}:ev:{session_id}"

    def applications(self, session_id: str) -> str:
        return f"{self.base(session_id)}:apps:{session_id}"

    def chunks(self, blob_id: str) -> str:
        return f"{self.base(blob_id)}:b:{blob_id}"

    def blob(self, blob_id: str) -> str:
        return f"{self.base(blob_id)}:bm:{blob_id}"

    # -- shared by every session: one slot of their own ------------------------------

    @property
    def _shared(self) -> str:
        return f"{self.prefix}:{{{self.prefix}}}"

    @property
    def sessions(self) -> str:
        return f"{self._shared}:sessions"

    @property
    def running(self) -> str:
        return f"{self._shared}:running"

    @property
    def resources(self) -> str:
        return f"{self._shared}:resources"

    def ready(self, partition_id: str) -> str:
        return f"{self._shared}:ready:{partition_id}"

    def wake(self, topic: int) -> str:
        return f"{self.prefix}:wake:{topic}"
