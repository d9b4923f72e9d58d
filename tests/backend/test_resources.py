"""Resources: operator blobs by key, shared by every session."""

from __future__ import annotations

import pytest

from agent.backend import Backend, BlobRef, NotFound
from tests.backend.support import blob, read


async def test_put_read_list_and_delete(backend: Backend) -> None:
    assert await backend.list_resources() == {}
    await backend.put_resource("model.bin", await blob(backend, b"weights"))
    await backend.put_resource("empty", await blob(backend, b""))

    assert await read(backend.read_resource("model.bin")) == b"weights"
    assert await read(backend.read_resource("empty")) == b""
    assert await backend.list_resources() == {"empty": 0, "model.bin": 7}

    await backend.delete_resource("model.bin")

    assert await backend.list_resources() == {"empty": 0}
    with pytest.raises(NotFound):
        await read(backend.read_resource("model.bin"))


async def test_putting_a_key_again_replaces_it(backend: Backend) -> None:
    await backend.put_resource("config", await blob(backend, b"old"))
    await backend.put_resource("config", await blob(backend, b"newer"))
    assert await read(backend.read_resource("config")) == b"newer"
    assert await backend.list_resources() == {"config": 5}


async def test_unknown_keys_and_blobs_are_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.delete_resource("nothing")
    with pytest.raises(NotFound):
        await read(backend.read_resource("nothing"))
    with pytest.raises(NotFound):
        await backend.put_resource("ghost", BlobRef("no-such-blob", 1))
    assert await backend.list_resources() == {}
