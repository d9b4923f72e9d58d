"""Ports handed to a process that binds them later."""

from __future__ import annotations

import random
import socket

import pytest

from agent import _ports
from agent._ports import free_port


def test_ports_are_bindable_and_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_ports_stay_below_the_ephemeral_range() -> None:
    start = _ports._ephemeral_start()
    if start - _ports._LOWEST < _ports._ATTEMPTS:
        # This machine's range leaves no room below it: the kernel picks instead.
        assert free_port() > 0
        return
    assert all(_ports._LOWEST <= free_port() < start for _ in range(20))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ports, "_ephemeral_start", lambda: 32768)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        spare = free_port()
        _ports._handed_out.discard(spare)
        draws = iter([taken, spare])
        monkeypatch.setattr(random, "randrange", lambda *_: next(draws))
        assert free_port() == spare
