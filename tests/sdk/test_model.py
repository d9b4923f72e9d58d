"""Task options, task definitions and addresses: their conversions and checks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gridpod_api import objects_pb2
from worker_sdk import Address, TaskDefinition, TaskOptions


def test_options_round_trip_through_the_wire_message() -> None:
    options = TaskOptions(
        options={"kernel": "price", "curve": "eur"},
        max_duration=timedelta(minutes=5, microseconds=250),
        max_retries=3,
        priority=2,
        partition_id="gpu",
        application_name="pricer",
        application_version="1.2",
        application_namespace="acme",
        application_service="Pricing",
        engine_type="python",
    )
    message = options.to_proto()
    assert message.max_duration.seconds == 300
    assert TaskOptions.from_proto(message) == options
    assert options.kernel == "price"


def test_unset_fields_stay_unset_on_the_wire() -> None:
    message = TaskOptions(priority=4).to_proto()
    assert message.ListFields()[0][0].name == "priority"
    assert len(message.ListFields()) == 1
    back = TaskOptions.from_proto(message)
    assert back.max_duration is None
    assert back.partition_id is None
    assert back.kernel is None


def test_zero_duration_is_kept_apart_from_unset() -> None:
    message = objects_pb2.TaskOptions()
    message.max_duration.SetInParent()
    assert TaskOptions.from_proto(message).max_duration == timedelta(0)


def test_options_must_map_strings_to_strings() -> None:
    with pytest.raises(TypeError, match="offending: \\['n'\\]"):
        TaskOptions(options={"n": 3})  # type: ignore[dict-item]


def test_options_are_read_only() -> None:
    options = TaskOptions(options={"kernel": "a"})
    with pytest.raises(TypeError):
        options.options["kernel"] = "b"  # type: ignore[index]


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="max_duration"):
        TaskOptions(max_duration=timedelta(seconds=-1))


def test_a_definition_needs_an_expected_output() -> None:
    with pytest.raises(ValueError, match="at least one expected output"):
        TaskDefinition(payload=b"x")


def test_a_definition_refuses_a_string_for_a_key_list() -> None:
    with pytest.raises(TypeError, match="expected_outputs takes a list"):
        TaskDefinition(payload=b"x", expected_outputs="out")


@pytest.mark.parametrize(
    ("text", "socket_type", "kind", "target"),
    [
        ("unix:///cache/worker.sock", None, "unix", "/cache/worker.sock"),
        ("unix:/cache/worker.sock", None, "unix", "/cache/worker.sock"),
        ("/cache/worker.sock", None, "unix", "/cache/worker.sock"),
        ("cache/worker.sock", "UnixDomainSocket", "unix", "cache/worker.sock"),
        ("127.0.0.1:1080", None, "tcp", "127.0.0.1:1080"),
        ("http://0.0.0.0:1080", "Tcp", "tcp", "0.0.0.0:1080"),
        ("[::1]:1080", None, "tcp", "[::1]:1080"),
    ],
)
def test_address_forms(
    text: str, socket_type: str | None, kind: str, target: str
) -> None:
    address = Address.parse(text, socket_type)
    assert (address.kind, address.target) == (kind, target)


@pytest.mark.parametrize(
    ("text", "socket_type", "message"),
    [
        ("localhost", None, "is not an address"),
        ("host:99999", None, "is not an address"),
        ("unix://", None, "names no socket path"),
        ("/x.sock", "Pipe", "unknown socket type 'Pipe'"),
    ],
)
def test_bad_addresses_are_named(
    text: str, socket_type: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Address.parse(text, socket_type)
