"""Which sessions a caller sees: all of them with the permission to, else those
it created. Another user's session answers as one that does not exist, so that a
caller cannot learn which sessions others have."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace

from agent.backend import (
    Backend,
    NotFound,
    ResultQuery,
    SessionQuery,
    SessionRecord,
    TaskQuery,
    TaskRecord,
)
from agent.control._access import Access, Caller
from agent.control._config import ControlPlaneConfig
from agent.control._requests import Context

__all__ = ["Scope", "ScopedService"]


class Scope:
    """What one caller may see of the grid, over the backend.

    Every method costs nothing for a caller that sees every session. A session's
    owner never changes, so what was learnt of a session is kept for the life of
    the scope (one call, or one stream).
    """

    def __init__(self, backend: Backend, caller: Caller) -> None:
        self._backend = backend
        self.caller = caller
        self.sees_all = caller.sees_all_sessions
        self._visible: dict[str, bool] = {}

    @property
    def owner(self) -> str:
        """The owner of the sessions the caller creates."""
        return self.caller.owner

    async def session(self, session_id: str) -> SessionRecord:
        """The session; raises ``NotFound`` for one the caller does not see, as
        the backend does for one that does not exist."""
        record = await self._backend.get_session(session_id)
        if not self.sees_all and record.owner != self.caller.owner:
            raise NotFound(f"no session {session_id!r}")
        self._visible[session_id] = True
        return record

    async def require(self, session_id: str) -> None:
        """Raise ``NotFound`` for a session the caller does not see; the backend is
        not asked when it sees them all."""
        if not self.sees_all:
            await self.session(session_id)

    async def task(self, task_id: str) -> TaskRecord:
        """The task; raises ``NotFound`` for one of a session the caller does not
        see, as the backend does for one that does not exist."""
        record = await self._backend.get_task(task_id)
        if not await self.visible((record.session_id,)):
            raise NotFound(f"no task {task_id!r}")
        return record

    async def visible(self, session_ids: Iterable[str]) -> set[str]:
        """Those of ``session_ids`` the caller sees (and that exist)."""
        wanted = set(session_ids)
        if self.sees_all:
            return wanted
        unknown = [s for s in wanted if s not in self._visible]
        if unknown:
            query = SessionQuery(session_ids=unknown, owners=(self.caller.owner,))
            owned = {
                s.session_id for s in (await self._backend.list_sessions(query)).items
            }
            for session_id in unknown:
                self._visible[session_id] = session_id in owned
        return {s for s in wanted if self._visible[s]}

    def sessions(self, query: SessionQuery) -> SessionQuery:
        """The query, kept to the sessions the caller sees."""
        if self.sees_all:
            return query
        return replace(query, owners=(self.caller.owner,))

    async def tasks(self, query: TaskQuery) -> TaskQuery | None:
        """The query, kept to the sessions the caller sees; None when it can select
        nothing."""
        if self.sees_all:
            return query
        if not query.session_ids and query.task_ids:
            # The sessions of the tasks named: usually one, where the sessions the
            # caller owns may be many.
            named = await self._backend.list_tasks(TaskQuery(task_ids=query.task_ids))
            sessions = await self.visible(task.session_id for task in named.items)
        else:
            sessions = await self._among(query.session_ids)
        if not sessions:
            return None
        return replace(query, session_ids=sorted(sessions))

    async def results(self, query: ResultQuery) -> ResultQuery | None:
        """The query, kept to the sessions the caller sees; None when it can select
        nothing."""
        if self.sees_all:
            return query
        sessions = await self._among(query.session_ids)
        if not sessions:
            return None
        return replace(query, session_ids=sorted(sessions))

    async def _among(self, session_ids: Collection[str]) -> set[str]:
        """The visible ones of ``session_ids``, or every session the caller owns
        when none is named."""
        if session_ids:
            return await self.visible(session_ids)
        query = SessionQuery(owners=(self.caller.owner,))
        owned = [s.session_id for s in (await self._backend.list_sessions(query)).items]
        self._visible.update(dict.fromkeys(owned, True))
        return set(owned)


class ScopedService:
    """What every service that answers each caller within its scope starts with:
    the backend, the configuration, who may call, and ``_scope`` for a call."""

    def __init__(
        self,
        backend: Backend,
        config: ControlPlaneConfig,
        access: Access | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._access = access or Access()

    def _scope(self, context: Context) -> Scope:
        return Scope(self._backend, self._access.identified(context))
