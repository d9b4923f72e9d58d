"""The distributed backend: the grid's state in one Redis (or a Redis-compatible
server), shared by agents and control planes on any number of hosts.

Open it with ``open_backend("redis://[:password@]host:port/db")`` (``rediss://``
for TLS). Query parameters: ``prefix`` (``gp`` by default) starts every key, so
several grids can share one server; ``events`` is how many events each session's
log keeps (a million by default); ``reconnect`` is for how many seconds a call
goes on trying to reach a server that does not answer (60). Any other parameter
goes to redis-py (``ssl_ca_certs=PATH``, say).

Every transition is one call of a Redis function of the library ``gridpod``
(``gridpod.lua``), loaded by the first call of each instance: Redis runs a function
to its end before anything else, so two agents never take the same task and a
transition is stored whole or not at all. A call that the connection lost is sent
again, with backoff, for up to ``reconnect`` seconds (a restarting server); it carries
the same nonce as the first, and a function that already ran replies what it
replied then rather than run twice.

Key layout, where ``P`` is the prefix and ``{T}`` the hash tag: the first eight
characters of the session's id. The ids of a session's tasks, and of the blobs
written for it, start with the same eight characters, so that every key of a
session and of its tasks, results and blobs is in one cluster slot, and every
transition touches that slot only.

``P:{T}:s:<session>``
    The session (hash): status, default options, partitions, times, and the
    counters of its events (``seq``), tasks and results (creation order).
``P:{T}:t:<task>``
    A task (hash): its record, its partition, priority and retry budget, the
    count of dependencies not yet completed, its lease (token, expiry), and
    ``stg``: the parent whose running attempt created it, until that commits.
``P:{T}:tasks:<session>``, ``P:{T}:results:<session>``
    The committed tasks and results of the session (sorted sets by creation).
``P:{T}:r:<session>:<key>``
    A result (hash): owner, status, data blob and size, ``pend`` (the subtask it
    was delegated to, effective at the owner's commit) and ``stg``.
``P:{T}:own:<task>``
    The keys of the results the task owns (set).
``P:{T}:dep:<session>:<key>``
    The tasks waiting for result ``key`` (set): pushed to when it completes.
``P:{T}:sr:<task>``
    What the task's attempt sent (hash: key to blob and size), until it commits.
``P:{T}:sub:<task>``
    The subtasks the task's attempt created (list), until it commits.
``P:{T}:q:<session>:<partition>``
    The queue (sorted set): highest priority first, then creation order.
``P:{T}:qp:<session>``, ``P:{T}:lease:<session>``
    The partitions the session ever queued in; the leased tasks by lease expiry.
``P:{T}:ev:<session>``
    The session's events (stream, entry id ``<seq>-1``), trimmed to ``events``.
``P:{T}:apps:<session>``
    The applications named by the session's committed tasks (set).
``P:{T}:b:<blob>``, ``P:{T}:bm:<blob>``
    A blob's chunks (list, as written) and its size, chunk count and whether
    anything references it (hash, written once the blob is whole).
``P:{T}:once:<nonce>``
    A function's reply, for two minutes, in case the call is sent again.

Shared by every session, in a slot of their own (``{P}``): ``P:{P}:sessions``
(every session by creation time), ``P:{P}:ready:<partition>`` (the sessions that
may have tasks queued in the partition: a hint that acquirers prune, announced
after each transition that queues a task, and again by every lease recovery) and
``P:{P}:resources`` (key to blob). Wake-ups are published on ``P:wake:1`` (a task
was queued) and ``P:wake:2`` (anything changed).

Each session numbers its events on its own: read them, and ask for the newest, by
session. Priorities order the tasks of one session; sessions are served in the
order they announced their queued tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from agent._chunks import chained
from agent.backend._base import (
    Attempt,
    Backend,
    BlobRef,
    NewTask,
    ResultRecord,
    ResultStatus,
    SessionRecord,
    TaskRecord,
    TaskRefusal,
    TaskStatus,
)
from agent.backend._errors import (
    BackendError,
    EventsExpired,
    LeaseLost,
    MissingOutputs,
    NotCompleted,
    NotFound,
    NotOwned,
    SessionCancelled,
    TaskCancelled,
)
from agent.backend._options import merge_options
from agent.backend._queries import (
    ApplicationQuery,
    ApplicationRecord,
    Event,
    EventKind,
    Page,
    ResultQuery,
    SessionQuery,
    Subscription,
    TaskQuery,
    Topic,
)
from agent.backend._redis import _listing
from agent.backend._redis._keys import Keys, fresh_id, nonce, tag_of
from agent.backend._redis._records import (
    event,
    fields,
    result_record,
    session_record,
    task_record,
)
from agent.backend._redis._wakeups import Hub
from gridpod_api import objects_pb2

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the Redis backend needs redis-py: pip install 'gridpod[redis]'"
    ) from missing

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_LIBRARY = Path(__file__).with_name("gridpod.lua")
_MEMO_SECONDS = 120
_KEEP_EVENTS = 1_000_000
# How long a call goes on trying to reach a server that does not answer.
_RECONNECT_SECONDS = 60
# Connections to Redis per backend instance, and how long a call waits for one.
_MAX_CONNECTIONS = 256
_CONNECTION_WAIT = 60.0
# Chunks and bytes read per round trip, at most, when streaming a blob out.
_READ_CHUNKS = 64
_READ_BYTES = 1 << 20
# Pipelined reads per round trip in listings.
_READ_BATCH = 500
# Sessions whose queues an acquirer looks at per round trip.
_CANDIDATES = 8
# A value sent at commit is stored with the commit when it is at most this big.
_INLINE_RESULT = 1 << 20
ROUND_TRIPS = Counter(
    "gridpod_redis_round_trips",
    "Requests to Redis that waited for a reply; a pipeline counts once.",
)
_ERRORS: dict[str, type[BackendError]] = {
    "NOTFOUND": NotFound,
    "LEASELOST": LeaseLost,
    "TASKCANCELLED": TaskCancelled,
    "NOTOWNED": NotOwned,
    "SESSIONCANCELLED": SessionCancelled,
    "BACKEND": BackendError,
}


def _library_code() -> str:
    """The library, with the numbers its code names prepended."""
    constants = {
        **{f"T_{status.name}": int(status) for status in TaskStatus},
        **{f"R_{status.name}": int(status) for status in ResultStatus},
        "S_RUNNING": 1,
        "S_CANCELLED": 2,
        **{f"EV_{kind.name}": int(kind) for kind in EventKind},
        "TOPIC_QUEUE": int(Topic.QUEUE),
        "TOPIC_STATE": int(Topic.STATE),
        "MEMO_SECONDS": _MEMO_SECONDS,
    }
    shebang, _, body = _LIBRARY.read_text().partition("\n")
    header = "\n".join(f"local {name} = {value}" for name, value in constants.items())
    return f"{shebang}\n{header}\n{body}"


def _whole(query: dict[str, list[str]], name: str, default: int, url: str) -> int:
    """The whole number ``name`` of the URL's query, taken out of ``query``."""
    text = query.pop(name, [str(default)])[-1]
    try:
        value = int(text)
    except ValueError as err:
        raise ValueError(f"{name} in {url!r} must be a whole number") from err
    if value < 0:
        raise ValueError(f"{name} in {url!r} must be 0 or more")
    return value


def _stamp(value: datetime | None) -> str:
    return "" if value is None else f"{value.timestamp():.6f}"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _translate(error: redis_errors.ResponseError) -> BackendError:
    text = str(error)
    kind, _, message = text.partition(" ")
    if kind.startswith("GP_"):
        kind = kind[3:]
        if kind == "MISSING":
            return MissingOutputs(json.loads(message) or [])
        return _ERRORS.get(kind, BackendError)(message)
    return BackendError(f"Redis refused a call: {text}")


def _taken(answer: list[Any]) -> list[Any]:
    """An acquire's answer with the task's hash decoded, once for all its uses."""
    return [answer[0], fields(answer[1]), *answer[2:]]


def _priority(head_score: bytes | float) -> int:
    """The priority of the task at the head of a queue, from its score there
    (minus the priority times 10**12, plus the task's creation number)."""
    return math.ceil(-float(head_score) / 1e12)


def _ready_score(priority: int) -> float:
    """A session's score in a partition's index: the highest priority of its
    queued tasks first, then the first to announce it."""
    return -priority * 1e10 + time.time()


class _Outcome:
    """What a function replied: its answer and what the transition did."""

    def __init__(self, reply: list[Any]) -> None:
        self.answer: Any = reply[0]
        # The partitions it queued tasks in, with their queues' head priority.
        self.queued = {
            part.decode(): _priority(head) if head is not None else 0
            for part, head in reply[1] or []
        }
        self.dropped = [blob.decode() for blob in reply[3] or []]


class RedisBackend(Backend):
    """The backend over one Redis server or cluster."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "gp",
        keep_events: int = _KEEP_EVENTS,
        where: str = "redis",
    ) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self._keep_events = keep_events
        self._where = where
        self._loaded = False
        self._code = _library_code()
        # Options and partitions never change once a session exists.
        self._sessions: dict[str, SessionRecord] = {}
        # The session each partition's last task came from: tried first next time.
        self._sticky: dict[str, str] = {}
        self._hub = Hub(client, self._keys)
        self._closed = False
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._hub.start()

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        prefix = query.pop("prefix", ["gp"])[-1]
        keep = _whole(query, "events", _KEEP_EVENTS, url)
        if keep < 1:
            raise ValueError(f"events in {url!r} must be at least 1")
        reconnect = _whole(query, "reconnect", _RECONNECT_SECONDS, url)
        rest = urllib.parse.urlencode({k: v[-1] for k, v in query.items()})
        connect = urllib.parse.urlunsplit(parts._replace(query=rest))
        # Calls beyond the pool's connections wait for one rather than fail: a
        # control plane following many streams may have that many calls at once.
        pool = BlockingConnectionPool.from_url(
            connect,
            max_connections=_MAX_CONNECTIONS,
            timeout=_CONNECTION_WAIT,
            # Backoff reaches its cap of a second after a few tries: about one
            # try a second from then on.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), reconnect + 5),
            retry_on_error=[
                redis_errors.ConnectionError,
                redis_errors.TimeoutError,
                redis_errors.BusyLoadingError,
            ],
            health_check_interval=30,
        )
        client = Redis(connection_pool=pool)
        shown = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        return cls(client, prefix=prefix, keep_events=keep, where=shown)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._hub.close()
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    # -- calling Redis --------------------------------------------------------------

    async def _load(self) -> None:
        await self._redis.function_load(self._code, replace=True)
        self._loaded = True

    async def _guarded(self, call: Any) -> Any:
        if self._closed:
            raise BackendError(f"the backend on {self._where} is closed")
        ROUND_TRIPS.inc()
        try:
            return await call
        except redis_errors.ResponseError as err:
            raise _translate(err) from err
        except redis_errors.RedisError as err:
            raise BackendError(f"Redis at {self._where} failed: {err}") from err

    async def _fcall(
        self,
        name: str,
        on: str,
        *args: Any,
        now: datetime | None = None,
        session_id: str | None = None,
    ) -> _Outcome:
        """Call the function ``gp_<name>`` on the slot of the id ``on``, which is
        ``session_id`` (the session whose queues the call may fill) by default."""
        if not self._loaded:
            await self._guarded(self._load())
        header = (self._keys.base(on), _stamp(now), self._keep_events, nonce())
        call = functools.partial(self._redis.fcall, f"gp_{name}", 1, *header, *args)
        try:
            reply = await self._guarded(call())
        except BackendError as err:
            # A server that lost its functions (restarted without persistence).
            if "function not found" not in str(err).lower():
                raise
            await self._guarded(self._load())
            reply = await self._guarded(call())
        outcome = _Outcome(reply)
        await self._after(session_id or on, outcome)
        return outcome

    async def _after(self, session_id: str, outcome: _Outcome) -> None:
        if not outcome.queued and not outcome.dropped:
            return
        pipe = self._redis.pipeline(transaction=False)
        for partition, priority in outcome.queued.items():
            score = _ready_score(priority)
            pipe.zadd(self._keys.ready(partition), {session_id: score}, lt=True)
        for blob_id in outcome.dropped:
            pipe.delete(self._keys.chunks(blob_id), self._keys.blob(blob_id))
        await self._guarded(pipe.execute())

    # -- sessions ---------------------------------------------------------------------

    async def create_session(
        self,
        default_options: objects_pb2.TaskOptions,
        partition_ids: Sequence[str],
        *,
        owner: str = "",
    ) -> SessionRecord:
        session_id = fresh_id()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._keys.sessions, {session_id: time.time()})
        await self._guarded(pipe.execute())
        outcome = await self._fcall(
            "create_session",
            session_id,
            session_id,
            default_options.SerializeToString(deterministic=True),
            json.dumps(list(partition_ids)),
            default_options.application_name,
            default_options.application_version,
            owner,
        )
        record = session_record(session_id, fields(outcome.answer))
        self._sessions[session_id] = record
        return record

    async def get_session(self, session_id: str) -> SessionRecord:
        row = await self._guarded(self._redis.hgetall(self._keys.session(session_id)))
        if not row:
            raise NotFound(f"no session {session_id!r}")
        return session_record(session_id, {k.decode(): v for k, v in row.items()})

    async def _session(self, session_id: str) -> SessionRecord:
        """The session, from what this instance already read of it if it can."""
        known = self._sessions.get(session_id)
        if known is None:
            known = await self.get_session(session_id)
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            self._sessions[session_id] = known
        return known

    async def cancel_session(self, session_id: str) -> SessionRecord:
        outcome = await self._fcall("cancel_session", session_id, session_id)
        return session_record(session_id, fields(outcome.answer))

    # -- blobs ------------------------------------------------------------------------

    async def write_blob(
        self, chunks: AsyncIterable[bytes], *, session_id: str | None = None
    ) -> BlobRef:
        blob_id = fresh_id(None if session_id is None else tag_of(session_id))
        size = count = 0
        batch: list[bytes] = []
        batch_size = 0
        try:
            async for chunk in chunks:
                batch.append(bytes(chunk))
                batch_size += len(chunk)
                if batch_size >= _INLINE_RESULT or len(batch) >= _READ_CHUNKS:
                    # A function, so that a batch sent again is appended once.
                    await self._fcall("append", blob_id, blob_id, "", *batch)
                    size, count = size + batch_size, count + len(batch)
                    batch, batch_size = [], 0
            size, count = size + batch_size, count + len(batch)
            await self._fcall("append", blob_id, blob_id, f"{size}:{count}", *batch)
        except BaseException:
            # Nothing references the blob yet.
            with contextlib.suppress(Exception):
                await self._redis.delete(self._keys.chunks(blob_id))
            raise
        return BlobRef(blob_id, size)

    def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        return self._stream(blob_id)

    async def _stream(self, blob_id: str) -> AsyncIterator[bytes]:
        meta = await self._guarded(self._redis.hget(self._keys.blob(blob_id), "n"))
        if meta is None:
            raise NotFound(f"no blob {blob_id!r}")
        count, seq, wanted = int(meta), 0, 1
        key = self._keys.chunks(blob_id)
        while seq < count:
            last = min(seq + wanted, count) - 1
            batch = await self._guarded(self._redis.lrange(key, seq, last))
            if not batch:
                raise NotFound(f"blob {blob_id} was deleted while being read")
            seq += len(batch)
            # About a megabyte per round trip, whatever size the chunks are.
            average = max(1, sum(map(len, batch)) // len(batch))
            wanted = max(1, min(_READ_CHUNKS, _READ_BYTES // average))
            for chunk in batch:
                yield chunk

    async def _blob_size(self, blob_id: str) -> int | None:
        size = await self._guarded(self._redis.hget(self._keys.blob(blob_id), "sz"))
        return None if size is None else int(size)

    async def _mark_referenced(self, blob_ids: Iterable[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for blob_id in blob_ids:
            pipe.hset(self._keys.blob(blob_id), "ref", 1)
        await self._guarded(pipe.execute())

    async def discard_blobs(self, blob_ids: Iterable[str]) -> None:
        by_tag: dict[str, list[str]] = {}
        for blob_id in dict.fromkeys(blob_ids):
            by_tag.setdefault(tag_of(blob_id), []).append(blob_id)
        for blobs in by_tag.values():
            await self._fcall("discard_blobs", blobs[0], *blobs)

    # -- creating tasks ---------------------------------------------------------------

    async def submit_tasks(
        self,
        session_id: str,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None = None,
    ) -> list[TaskRecord | TaskRefusal]:
        return await self._create(session_id, tasks, options, None)

    async def stage_subtasks(
        self,
        attempt: Attempt,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None = None,
    ) -> list[TaskRecord | TaskRefusal]:
        return await self._create(attempt.task.session_id, tasks, options, attempt)

    async def _create(
        self,
        session_id: str,
        tasks: Sequence[NewTask],
        options: objects_pb2.TaskOptions | None,
        parent: Attempt | None,
    ) -> list[TaskRecord | TaskRefusal]:
        session = await self._session(session_id)
        merged = merge_options(session.default_options, options)
        partitions = list(session.partition_ids)
        if not merged.partition_id and partitions:
            merged.partition_id = partitions[0]
        refusal = ""
        if partitions and merged.partition_id not in partitions:
            refusal = (
                f"partition {merged.partition_id!r} is not one of session "
                f"{session_id}'s partitions {partitions}"
            )
        foreign = await self._foreign_sizes(session_id, tasks)
        request = {
            "sid": session_id,
            "parent": "" if parent is None else parent.task.task_id,
            "token": "" if parent is None else parent.token,
            "agent": "" if parent is None else parent.agent_id,
            "opt": merged.SerializeToString(deterministic=True).hex(),
            "part": merged.partition_id,
            "prio": str(merged.priority),
            "maxr": str(merged.max_retries),
            "an": merged.application_name,
            "av": merged.application_version,
            "ans": merged.application_namespace,
            "asv": merged.application_service,
            "refusal": refusal,
            "tasks": [
                {
                    "pay": task.payload.blob_id,
                    "psz": foreign.get(task.payload.blob_id, -1),
                    "outs": list(task.expected_outputs),
                    "deps": list(task.data_dependencies),
                }
                for task in tasks
            ],
        }
        outcome = await self._fcall("submit", session_id, json.dumps(request))
        answers = self._answers(outcome.answer)
        created = {
            task.payload.blob_id
            for task, answer in zip(tasks, answers, strict=True)
            if isinstance(answer, TaskRecord)
        }
        if created & foreign.keys():
            await self._mark_referenced(created & foreign.keys())
        return answers

    async def _foreign_sizes(
        self, session_id: str, tasks: Sequence[NewTask]
    ) -> dict[str, int]:
        """The sizes of payloads stored away from the session (written without its
        id): the function can only look up the blobs beside the session."""
        tag = tag_of(session_id)
        foreign = [t.payload.blob_id for t in tasks if tag_of(t.payload.blob_id) != tag]
        if not foreign:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for blob_id in foreign:
            pipe.hget(self._keys.blob(blob_id), "sz")
        sizes = await self._guarded(pipe.execute())
        return {
            blob_id: -2 if size is None else int(size)
            for blob_id, size in zip(foreign, sizes, strict=True)
        }

    @staticmethod
    def _answers(answer: list[Any]) -> list[TaskRecord | TaskRefusal]:
        answers: list[TaskRecord | TaskRefusal] = []
        for index, (kind, value) in enumerate(answer):
            if kind == b"T":
                answers.append(task_record(fields(value)))
            else:
                answers.append(TaskRefusal(index, value.decode()))
        return answers

    # -- the agent's side -------------------------------------------------------------

    async def acquire(
        self,
        agent_id: str,
        partition_id: str,
        lease: timedelta,
        *,
        payload_up_to: int = 0,
    ) -> Attempt | None:
        token = secrets.token_urlsafe(32)
        args = (partition_id, agent_id, token, lease.total_seconds(), payload_up_to)
        sticky = self._sticky.pop(partition_id, None)
        tried = {sticky} if sticky else set()
        if sticky:
            answer = await self._acquire_sticky(sticky, partition_id, args)
            if answer is not None:
                return await self._attempt(agent_id, token, answer, payload_up_to)
        while candidates := [
            s for s in await self._candidates(partition_id) if s not in tried
        ]:
            for session_id in candidates:
                tried.add(session_id)
                outcome = await self._fcall("acquire", session_id, session_id, *args)
                if outcome.answer[0] == 1:
                    taken = _taken(outcome.answer)
                    await self._keep_on(session_id, partition_id, taken)
                    return await self._attempt(agent_id, token, taken, payload_up_to)
                await self._retire(partition_id, session_id)
        return None

    async def _acquire_sticky(
        self, session_id: str, partition_id: str, args: tuple[Any, ...]
    ) -> list[Any] | None:
        """Take the next task of the session the last one came from, and read
        the partition's best priority in the same round trip: a session with
        tasks of a higher priority gets the next acquire."""
        if not self._loaded:
            await self._guarded(self._load())
        header = (self._keys.base(session_id), "", self._keep_events, nonce())
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(self._keys.ready(partition_id), 0, 0, withscores=True)
        pipe.fcall("gp_acquire", 1, *header, session_id, *args)
        try:
            best, reply = await self._guarded(pipe.execute())
        except BackendError as err:
            if "function not found" not in str(err).lower():
                raise
            self._loaded = False
            return None  # the caller's candidates loop loads them again
        outcome = _Outcome(reply)
        await self._after(session_id, outcome)
        if outcome.answer[0] != 1:
            await self._retire(partition_id, session_id)
            return None
        answer = _taken(outcome.answer)
        await self._keep_on(session_id, partition_id, answer, best)
        return answer

    async def _keep_on(
        self,
        session_id: str,
        partition_id: str,
        answer: list[Any],
        best: list[tuple[bytes, float]] | None = None,
    ) -> None:
        """After a task of the session: take the next one from it too while its
        queue's head has the partition's highest priority, and keep the index's
        score for it up to date when that priority fell."""
        head = answer[3]
        if head is None:
            return  # its queue is empty: the next acquire retires it
        taken = int(answer[1]["prio"])
        following = _priority(head)
        if following < taken:
            await self._guarded(
                self._redis.zadd(
                    self._keys.ready(partition_id),
                    {session_id: _ready_score(following)},
                    xx=True,
                    gt=True,
                )
            )
        if (
            best
            and best[0][0].decode() != session_id
            and following < math.ceil(-best[0][1] / 1e10)
        ):
            return  # another session has tasks of a higher priority
        self._sticky[partition_id] = session_id

    async def _candidates(self, partition_id: str) -> list[str]:
        ready = await self._guarded(
            self._redis.zrange(self._keys.ready(partition_id), 0, _CANDIDATES - 1)
        )
        return [session_id.decode() for session_id in ready]

    async def _retire(self, partition_id: str, session_id: str) -> None:
        """Drop a session with an empty queue from the partition's index, unless a
        task was queued meanwhile: its announcement may have come before this."""
        ready = self._keys.ready(partition_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(ready, session_id)
        pipe.zcard(self._keys.queue(session_id, partition_id))
        _, queued = await self._guarded(pipe.execute())
        if queued:
            head = await self._guarded(
                self._redis.zrange(
                    self._keys.queue(session_id, partition_id), 0, 0, withscores=True
                )
            )
            priority = _priority(head[0][1]) if head else 0
            await self._guarded(
                self._redis.zadd(ready, {session_id: _ready_score(priority)}, lt=True)
            )

    async def _attempt(
        self, agent_id: str, token: str, answer: list[Any], payload_up_to: int
    ) -> Attempt:
        _, row, payload, _ = answer
        task = task_record(row)
        expires = _utc(float(row["lease"]))
        if payload is None and task.payload.size <= payload_up_to:
            # Stored away from the session: the function could not bring it.
            payload = b"".join([c async for c in self._stream(task.payload.blob_id)])
        return Attempt(task, agent_id, token, expires, payload_data=payload)

    @staticmethod
    def _attempt_args(attempt: Attempt) -> tuple[str, str, str]:
        return (attempt.task.task_id, attempt.token, attempt.agent_id)

    async def _on_attempt(
        self, name: str, attempt: Attempt, *args: Any, now: datetime | None = None
    ) -> _Outcome:
        return await self._fcall(
            name,
            attempt.task.task_id,
            *self._attempt_args(attempt),
            *args,
            now=now,
            session_id=attempt.task.session_id,
        )

    async def start(self, attempt: Attempt, at: datetime | None = None) -> None:
        await self._on_attempt("start", attempt, now=at)

    async def _started_at(self, attempt: Attempt, moment: datetime | None) -> None:
        # A start of its own: the function is a no-op for an attempt started
        # already.
        if moment is not None:
            await self.start(attempt, moment)

    async def renew(self, attempt: Attempt, lease: timedelta) -> Attempt:
        outcome = await self._on_attempt("renew", attempt, lease.total_seconds())
        return replace(attempt, lease_expires_at=_utc(float(outcome.answer)))

    async def stage_result(self, attempt: Attempt, key: str, data: BlobRef) -> None:
        size = -1
        if tag_of(data.blob_id) != tag_of(attempt.task.session_id):
            known = await self._blob_size(data.blob_id)
            if known is None:
                raise NotFound(f"no blob {data.blob_id!r}")
            size = known
        await self._on_attempt("stage_result", attempt, key, data.blob_id, size)
        if size >= 0:
            await self._mark_referenced([data.blob_id])

    async def stage_result_data(
        self, attempt: Attempt, key: str, chunks: AsyncIterable[bytes]
    ) -> BlobRef:
        held: list[bytes] = []
        size = 0
        iterator = aiter(chunks)
        async for chunk in iterator:
            held.append(bytes(chunk))
            size += len(chunk)
            if size > _INLINE_RESULT:
                break
        else:
            # Small: stored and staged by one call.
            data = b"".join(held)
            blob_id = fresh_id(tag_of(attempt.task.session_id))
            await self._on_attempt(
                "stage_result", attempt, key, blob_id, len(data), data
            )
            return BlobRef(blob_id, len(data))
        blob = await self.write_blob(
            chained(held, iterator), session_id=attempt.task.session_id
        )
        await self.stage_result(attempt, key, blob)
        return blob

    async def complete(
        self,
        attempt: Attempt,
        results: Mapping[str, bytes] | None = None,
        *,
        started_at: datetime | None = None,
    ) -> None:
        await self._started_at(attempt, started_at)
        tag = tag_of(attempt.task.session_id)
        held: list[Any] = []
        for key, data in (results or {}).items():
            held += [key, fresh_id(tag), data]
        await self._on_attempt("complete", attempt, *held)

    async def fail(
        self,
        attempt: Attempt,
        error: str,
        status: TaskStatus = TaskStatus.ERROR,
        *,
        started_at: datetime | None = None,
    ) -> TaskRecord:
        await self._started_at(attempt, started_at)
        outcome = await self._on_attempt("fail", attempt, error, int(status))
        return task_record(fields(outcome.answer))

    async def release(self, attempt: Attempt) -> None:
        await self._on_attempt("release", attempt)

    async def mark_cancelled(self, attempt: Attempt) -> TaskRecord:
        outcome = await self._on_attempt("mark_cancelled", attempt)
        return task_record(fields(outcome.answer))

    async def recover_expired(self, now: datetime | None = None) -> list[str]:
        sessions = await self._all_sessions()
        recovered: list[str] = []
        for start in range(0, len(sessions), _READ_BATCH):
            batch = sessions[start : start + _READ_BATCH]
            for session_id, outcome in zip(
                batch, await self._recover_sessions(batch, now), strict=True
            ):
                recovered += [self._log_recovery(entry) for entry in outcome.answer]
                await self._after(session_id, outcome)
        return recovered

    async def _recover_sessions(
        self, sessions: Sequence[str], now: datetime | None
    ) -> list[_Outcome]:
        """One recovery call per session, all in one round trip: a recovery run
        again after a lost reply finds nothing more to do, so it needs no nonce."""
        if not self._loaded:
            await self._guarded(self._load())

        async def recover() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for session_id in sessions:
                base = self._keys.base(session_id)
                header = (base, _stamp(now), self._keep_events, nonce())
                pipe.fcall("gp_recover", 1, *header, session_id)
            replies: list[Any] = await self._guarded(pipe.execute())
            return replies

        try:
            replies = await recover()
        except BackendError as err:
            if "function not found" not in str(err).lower():
                raise
            await self._guarded(self._load())
            replies = await recover()
        return [_Outcome(reply) for reply in replies]

    @staticmethod
    def _log_recovery(entry: list[Any]) -> str:
        task_id, agent_id, attempt, after, message = (
            item.decode() if isinstance(item, bytes) else item for item in entry
        )
        extra = {"task_id": task_id, "attempt": attempt, "agent_id": agent_id}
        if after == "cancelled":
            logger.info(
                "task %s: lease of agent %r expired while cancelling; cancelled",
                task_id,
                agent_id,
                extra=extra,
            )
        else:
            logger.warning(
                "task %s: %s; %s",
                task_id,
                message,
                f"retried as {after}" if after != task_id else "no retry left",
                extra=extra,
            )
        return str(task_id)

    async def _all_sessions(self) -> list[str]:
        found = await self._guarded(self._redis.zrange(self._keys.sessions, 0, -1))
        return [session_id.decode() for session_id in found]

    # -- reading and cancelling -------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskRecord:
        row = await self._guarded(self._redis.hgetall(self._keys.task(task_id)))
        if not row:
            raise NotFound(f"no task {task_id!r}")
        return task_record({k.decode(): v for k, v in row.items()})

    async def _result_row(self, session_id: str, key: str) -> dict[str, bytes]:
        found = await self._guarded(
            self._redis.hgetall(self._keys.result(session_id, key))
        )
        row = {k.decode(): v for k, v in found.items()}
        # A result that a staged subtask created exists only for its parent.
        if not row or "stg" in row:
            raise NotFound(f"no result {key!r} in session {session_id}")
        return row

    async def get_result(self, session_id: str, key: str) -> ResultRecord:
        return result_record(session_id, key, await self._result_row(session_id, key))

    def read_result(self, session_id: str, key: str) -> AsyncIterator[bytes]:
        return self._result_stream(session_id, key)

    async def _result_stream(self, session_id: str, key: str) -> AsyncIterator[bytes]:
        row = await self._result_row(session_id, key)
        status = ResultStatus(int(row["st"]))
        if status != ResultStatus.COMPLETED:
            raise NotCompleted(
                f"result {key!r} of session {session_id} is {status.name}: it has "
                "no data"
            )
        async for chunk in self._stream(row["blob"].decode()):
            yield chunk

    async def cancel_tasks(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(self._keys.task(task_id))
        found = await self._guarded(pipe.execute())
        for task_id, exists in zip(task_ids, found, strict=True):
            if not exists:
                raise NotFound(f"no task {task_id!r}")
        by_tag: dict[str, list[str]] = {}
        for task_id in dict.fromkeys(task_ids):
            by_tag.setdefault(tag_of(task_id), []).append(task_id)
        records: dict[str, TaskRecord] = {}
        for ids in by_tag.values():
            outcome = await self._fcall("cancel_tasks", ids[0], *ids)
            for task_id, flat in zip(ids, outcome.answer, strict=True):
                records[task_id] = task_record(fields(flat))
        return [records[task_id] for task_id in task_ids]

    # -- resources --------------------------------------------------------------------

    async def put_resource(self, key: str, data: BlobRef) -> None:
        if await self._blob_size(data.blob_id) is None:
            raise NotFound(f"no blob {data.blob_id!r}")
        await self._mark_referenced([data.blob_id])
        resources = self._keys.resources
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(resources, key)
        pipe.hset(resources, key, f"{data.blob_id}|{data.size}")
        replaced, _ = await self._guarded(pipe.execute())
        if replaced is not None:
            old = replaced.decode().partition("|")[0]
            if old != data.blob_id:
                await self._delete_blob(old)

    async def _delete_blob(self, blob_id: str) -> None:
        await self._guarded(
            self._redis.delete(self._keys.chunks(blob_id), self._keys.blob(blob_id))
        )

    async def _resource_blob(self, key: str) -> str:
        found = await self._guarded(self._redis.hget(self._keys.resources, key))
        if found is None:
            raise NotFound(f"no resource {key!r}")
        return str(found.decode().partition("|")[0])

    def read_resource(self, key: str) -> AsyncIterator[bytes]:
        return self._resource_stream(key)

    async def _resource_stream(self, key: str) -> AsyncIterator[bytes]:
        async for chunk in self._stream(await self._resource_blob(key)):
            yield chunk

    async def list_resources(self) -> dict[str, int]:
        found = await self._guarded(self._redis.hgetall(self._keys.resources))
        sizes = {
            key.decode(): int(value.decode().partition("|")[2])
            for key, value in found.items()
        }
        return dict(sorted(sizes.items()))

    async def delete_resource(self, key: str) -> None:
        blob_id = await self._resource_blob(key)
        await self._guarded(self._redis.hdel(self._keys.resources, key))
        await self._delete_blob(blob_id)

    # -- listings, events and wake-ups ------------------------------------------------

    async def _hashes(self, keys: Sequence[str]) -> list[dict[str, bytes]]:
        rows: list[dict[str, bytes]] = []
        for start in range(0, len(keys), _READ_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for key in keys[start : start + _READ_BATCH]:
                pipe.hgetall(key)
            for found in await self._guarded(pipe.execute()):
                rows.append({k.decode(): v for k, v in found.items()})
        return rows

    async def _members(self, keys: Sequence[str]) -> list[list[str]]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrange(key, 0, -1)
        found = await self._guarded(pipe.execute())
        return [[member.decode() for member in members] for members in found]

    async def _query_sessions(self, session_ids: Iterable[str]) -> list[str]:
        wanted = list(session_ids)
        return wanted if wanted else await self._all_sessions()

    async def _tasks(self, query: TaskQuery) -> list[TaskRecord]:
        if query.task_ids:
            ids = list(dict.fromkeys(query.task_ids))
        else:
            sessions = await self._query_sessions(query.session_ids)
            members = await self._members([self._keys.tasks(s) for s in sessions])
            ids = [task_id for found in members for task_id in found]
        rows = await self._hashes([self._keys.task(task_id) for task_id in ids])
        return [task_record(row) for row in rows if row and "stg" not in row]

    async def list_tasks(self, query: TaskQuery) -> Page[TaskRecord]:
        return _listing.task_page(query, await self._tasks(query))

    async def count_tasks(self, query: TaskQuery) -> dict[TaskStatus, int]:
        counts: dict[TaskStatus, int] = {}
        for task in await self._tasks(query):
            if _listing.task_matches(query, task):
                counts[task.status] = counts.get(task.status, 0) + 1
        return counts

    async def list_sessions(self, query: SessionQuery) -> Page[SessionRecord]:
        sessions = await self._query_sessions(query.session_ids)
        rows = await self._hashes([self._keys.session(s) for s in sessions])
        records = [
            session_record(session_id, row)
            for session_id, row in zip(sessions, rows, strict=True)
            if row
        ]
        return _listing.session_page(query, records)

    async def list_results(self, query: ResultQuery) -> Page[ResultRecord]:
        sessions = await self._query_sessions(query.session_ids)
        if query.keys:
            # Named keys (a watch's): look each up in each session rather than
            # read every result there is.
            pairs = [(s, key) for s in sessions for key in dict.fromkeys(query.keys)]
        else:
            members = await self._members([self._keys.results(s) for s in sessions])
            pairs = [
                (s, key)
                for s, keys in zip(sessions, members, strict=True)
                for key in keys
            ]
        rows = await self._hashes([self._keys.result(s, key) for s, key in pairs])
        records = [
            result_record(s, key, row)
            for (s, key), row in zip(pairs, rows, strict=True)
            if row and "stg" not in row
        ]
        return _listing.result_page(query, records)

    async def list_applications(
        self, query: ApplicationQuery
    ) -> Page[ApplicationRecord]:
        sessions = await self._all_sessions()
        pipe = self._redis.pipeline(transaction=False)
        for session_id in sessions:
            pipe.smembers(self._keys.applications(session_id))
        found: set[tuple[str, str, str, str]] = set()
        for members in await self._guarded(pipe.execute()):
            for member in members:
                name, version, namespace, service = json.loads(member)
                found.add((name, version, namespace, service))
        records = [ApplicationRecord(*identity) for identity in found]
        return _listing.application_page(query, records)

    async def read_events(
        self, after: int, *, session_id: str | None = None, limit: int = 1000
    ) -> list[Event]:
        if limit < 0:
            raise ValueError(f"a limit of events must be 0 or more, not {limit}")
        if session_id is None:
            raise BackendError(
                "the Redis backend numbers each session's events apart: read them "
                "by session"
            )
        if limit == 0:
            return []
        key = self._keys.events(session_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrange(key, min=f"{after + 1}-0", count=limit)
        pipe.hget(self._keys.session(session_id), "seq")
        entries, newest = await self._guarded(pipe.execute())
        events = [event(session_id, entry_id, data) for entry_id, data in entries]
        first = events[0].seq if events else int(newest or 0) + 1
        if first > after + 1 and after < int(newest or 0):
            raise EventsExpired(
                f"events of session {session_id} after {after} are no longer kept: "
                f"the oldest kept is {first}; read from last_event() on and list "
                "the current state"
            )
        return events

    async def last_event(self, session_id: str | None = None) -> int:
        if session_id is None:
            raise BackendError(
                "the Redis backend numbers each session's events apart: ask for "
                "a session's newest event"
            )
        newest = await self._guarded(
            self._redis.hget(self._keys.session(session_id), "seq")
        )
        return int(newest or 0)

    def subscribe(self, topics: Topic | None = None) -> Subscription:
        return self._hub.subscribe(Topic.ANY if topics is None else topics)
