"""Wake-ups through Redis pub/sub: the functions publish on one channel per topic
after each transition; one connection per backend instance listens and wakes the
local subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from agent.backend._queries import Subscription, Topic
from agent.backend._redis._keys import Keys

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["Hub"]

logger = logging.getLogger(__name__)

_TOPICS = (Topic.QUEUE, Topic.STATE)
# How long to wait before listening again after the connection broke.
_RECONNECT_DELAY = 0.2


class _Subscription(Subscription):
    def __init__(self, hub: Hub, topics: Topic) -> None:
        self._hub = hub
        self.topics = topics
        self.changed = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> bool:
        if not self.changed.is_set():
            try:
                await asyncio.wait_for(self._changed(), timeout)
            except asyncio.TimeoutError:
                return False
        self.changed.clear()
        return True

    async def _changed(self) -> None:
        await self._hub.ready(self.topics)
        await self.changed.wait()

    def close(self) -> None:
        self._hub.forget(self)


class Hub:
    """The subscriptions of one backend instance, and the listener serving them.

    The listener subscribes to a topic's channel only once a subscription wants
    it: an agent, which waits for queued tasks only, is not woken by every change
    of the grid. Until Redis confirms a channel, a change published on it may pass
    unseen; so once it confirms, the subscriptions made before are woken.
    """

    def __init__(self, client: Redis, keys: Keys) -> None:
        self._client = client
        self._channels = {topic: keys.wake(int(topic)).encode() for topic in _TOPICS}
        self._topics = {channel: topic for topic, channel in self._channels.items()}
        self._subscriptions: set[_Subscription] = set()
        # Topics asked for, and those Redis confirmed on the current connection.
        self._wanted: set[Topic] = set()
        self._confirmed: dict[Topic, asyncio.Event] = {
            topic: asyncio.Event() for topic in _TOPICS
        }
        self._pubsub: PubSub | None = None
        self._adding: set[asyncio.Future[None]] = set()
        self._listening: asyncio.Task[None] | None = None
        self._closing = False

    def start(self, topics: Topic = Topic.QUEUE) -> None:
        """Listen from now on, so that a subscription made later counts wake-ups
        from the moment it is made, not from when a connection is set up for it."""
        new = [t for t in _TOPICS if t & topics and t not in self._wanted]
        self._wanted.update(new)
        if self._listening is None or self._listening.done():
            self._listening = asyncio.ensure_future(self._listen())
        elif new and self._pubsub is not None:
            channels = [self._channels[t] for t in new]
            adding = asyncio.ensure_future(self._add(self._pubsub, channels))
            self._adding.add(adding)
            adding.add_done_callback(self._adding.discard)

    async def _add(self, pubsub: PubSub, channels: list[bytes]) -> None:
        with contextlib.suppress(Exception):  # a broken connection resubscribes all
            await pubsub.subscribe(*channels)

    def subscribe(self, topics: Topic) -> Subscription:
        subscription = _Subscription(self, topics)
        self._subscriptions.add(subscription)
        self.start(topics)
        return subscription

    def forget(self, subscription: _Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def ready(self, topics: Topic) -> None:
        """Wait until Redis confirmed the channels of ``topics``."""
        for topic in _TOPICS:
            if topic & topics:
                await self._confirmed[topic].wait()

    async def close(self) -> None:
        # redis-py may absorb a cancellation while it reads: the flag ends the loop.
        self._closing = True
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listening

    def _wake(self, topic: Topic) -> None:
        for subscription in self._subscriptions:
            if subscription.topics & topic:
                subscription.changed.set()

    async def _listen(self) -> None:
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(*(self._channels[t] for t in self._wanted))
                self._pubsub = pubsub
                await self._relay(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the connection broke: listen again
                logger.warning("listening for wake-ups failed: %s", err)
                await asyncio.sleep(_RECONNECT_DELAY)
            finally:
                self._pubsub = None
                for confirmed in self._confirmed.values():
                    confirmed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def _relay(self, pubsub: PubSub) -> None:
        while not self._closing:
            message = await pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            topic = self._topics.get(message["channel"])
            if topic is None:
                continue
            if message["type"] == "subscribe":
                # What was published before this went unseen: wake those waiting.
                self._confirmed[topic].set()
                self._wake(topic)
            elif message["type"] == "message":
                self._wake(topic)
