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
        await self._hub.ready()
        await self.changed.wait()

    def close(self) -> None:
        self._hub.forget(self)


class Hub:
    """The subscriptions of one backend instance, and the listener serving them."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self._client = client
        self._channels = {keys.wake(int(topic)).encode(): topic for topic in _TOPICS}
        self._subscriptions: set[_Subscription] = set()
        self._listening: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False

    def start(self) -> None:
        """Listen from now on, so that a subscription made later counts wake-ups
        from the moment it is made, not from when a connection is set up for it."""
        if self._listening is None or self._listening.done():
            self._listening = asyncio.ensure_future(self._listen())

    def subscribe(self, topics: Topic) -> Subscription:
        subscription = _Subscription(self, topics)
        self._subscriptions.add(subscription)
        self.start()
        return subscription

    def forget(self, subscription: _Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def ready(self) -> None:
        """Wait until the listener has subscribed (tests need wake-ups to count
        from the moment they subscribe)."""
        await self._subscribed.wait()

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
        broken = False
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                self._subscribed.set()
                if broken:
                    # What happened while nobody listened is unknown: wake everyone.
                    self._wake(Topic.ANY)
                await self._relay(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the connection broke: listen again
                logger.warning("listening for wake-ups failed: %s", err)
                broken = True
                await asyncio.sleep(_RECONNECT_DELAY)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _relay(self, pubsub: PubSub) -> None:
        while not self._closing:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=0.5
            )
            if message is None:
                continue
            topic = self._channels.get(message["channel"])
            if topic is not None:
                self._wake(topic)
