"""A fresh backend per test, for every kind of shared state the agent supports.

Tests take ``backend`` for one instance, or ``state`` to open several instances (or
processes) on the same state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.backend import Backend
from tests.backend.support import SharedState


@contextmanager
def _sqlite_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield f"sqlite://{tmp_path / 'state.db'}"


@contextmanager
def _redis_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield str(request.getfixturevalue("redis_url"))


# Each factory makes a fresh, empty state and yields the URL that opens it; another
# backend joins the suite with one entry here.
STATE_FACTORIES = [
    pytest.param(_sqlite_state, id="sqlite"),
    pytest.param(_redis_state, id="redis"),
]


@pytest.fixture(params=STATE_FACTORIES)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedState]:
    with request.param(request, tmp_path) as url:
        yield SharedState(url)


@pytest.fixture
async def backend(state: SharedState) -> AsyncIterator[Backend]:
    opened = state.open()
    yield opened
    await opened.close()
