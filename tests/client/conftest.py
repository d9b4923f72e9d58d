"""Fixtures of the client's tests: a control plane each, and clients of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.client.support import PlaneThread, short_tempdir
from worker_sdk.client import AsyncClient, AsyncSession, Client, TaskOptions


@pytest.fixture
def plane() -> Iterator[PlaneThread]:
    with short_tempdir() as folder:
        served = PlaneThread(folder)
        try:
            yield served
        finally:
            served.close()


@pytest.fixture
async def async_client(plane: PlaneThread) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(plane.address, call_timeout=10) as client:
        yield client


@pytest.fixture
async def session(async_client: AsyncClient) -> AsyncSession:
    return await async_client.create_session(TaskOptions(max_retries=0))


@pytest.fixture
def sync_client(plane: PlaneThread) -> Iterator[Client]:
    with Client(plane.address, call_timeout=10) as client:
        yield client
