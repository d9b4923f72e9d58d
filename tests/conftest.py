"""Fixtures shared by every test folder."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the session's tests; each test keeps its state under a key
    prefix of its own (``redis_url``)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A fresh, empty Redis state for one test."""
    return redis_server.url(prefix=f"t{next(_prefixes)}")
