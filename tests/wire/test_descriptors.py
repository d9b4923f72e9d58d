"""Our protos against ArmoniK's published ones: files, messages, fields and RPCs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tests.wire import reference
from tests.wire.ours import message_class, our_descriptors, private_pool
from tests.wire.samples import fill, variant_count
from tests.wire.shape import differences, shape_of

Files = dict[str, descriptor_pb2.FileDescriptorProto]
FieldProto = descriptor_pb2.FieldDescriptorProto

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos"

# Differences we keep on purpose, each with its reason. The API documentation and the
# reference releases agree on every file today, so nothing is listed; where they come
# to disagree, the documentation wins and the difference is recorded here.
DELIBERATE_DIFFERENCES: dict[str, str] = {}


@pytest.fixture(scope="module")
def ref_files() -> Files:
    return reference.reference_descriptors()


@pytest.fixture(scope="module")
def our_files() -> Files:
    return our_descriptors()


def test_one_proto_source_per_reference_file(
    ref_files: Files, our_files: Files
) -> None:
    sources = {p.name for p in PROTO_DIR.glob("*.proto")}
    assert len(ref_files) == 22
    assert sources == set(ref_files)
    assert set(our_files) == set(ref_files)


def test_descriptors_match_reference(ref_files: Files, our_files: Files) -> None:
    found = differences(shape_of(our_files.values()), shape_of(ref_files.values()))
    assert found == set(DELIBERATE_DIFFERENCES), "\n".join(sorted(found))
    assert all(reason.strip() for reason in DELIBERATE_DIFFERENCES.values())


def test_the_shape_covers_every_symbol(ref_files: Files) -> None:
    shape = shape_of(ref_files.values())
    kinds = [path.split(" ")[0] for path in shape if path.count(" ") == 1]
    # The API documentation lists 113 messages (nested ones and the map entry of
    # TaskOptions.options included), 12 enums and 9 services in 22 files.
    assert kinds.count("file") == 22
    assert kinds.count("message") == 113
    assert kinds.count("enum") == 12
    assert kinds.count("service") == 9


# Each mutation breaks one field in a way that must be seen as a wire difference.
def _renumber(field: FieldProto) -> None:
    field.number += 1000


def _retype(field: FieldProto) -> None:
    if field.type == FieldProto.TYPE_STRING:
        field.type = FieldProto.TYPE_BYTES
    else:
        field.ClearField("type_name")
        field.type = FieldProto.TYPE_STRING


def _move_oneof(field: FieldProto) -> None:
    if field.HasField("oneof_index"):
        field.ClearField("oneof_index")
    else:
        field.oneof_index = 0


def _all_fields(
    messages: list[descriptor_pb2.DescriptorProto],
) -> Iterator[tuple[descriptor_pb2.DescriptorProto, FieldProto]]:
    for message in messages:
        for field in message.field:
            yield message, field
        yield from _all_fields(list(message.nested_type))


@pytest.mark.parametrize("mutate", [_renumber, _retype, _move_oneof])
def test_any_broken_field_is_reported(
    ref_files: Files, our_files: Files, mutate: Callable[[FieldProto], None]
) -> None:
    reference_shape = shape_of(ref_files.values())
    unnoticed = []
    checked = 0
    for name, file in our_files.items():
        for message_index, _ in enumerate(file.message_type):
            broken = copy.deepcopy(file)
            fields = list(_all_fields([broken.message_type[message_index]]))
            for owner, field in fields:
                if mutate is _move_oneof and not owner.oneof_decl:
                    continue
                saved = copy.deepcopy(field)
                mutate(field)
                files = {**our_files, name: broken}
                if not differences(shape_of(files.values()), reference_shape):
                    unnoticed.append(f"{owner.name}.{saved.name}")
                field.CopyFrom(saved)
                checked += 1
    assert checked > 0
    assert unnoticed == []


def test_reference_messages_parse_identically_in_ours(
    ref_files: Files, our_files: Files
) -> None:
    ref_pool, our_pool = private_pool(ref_files), private_pool(our_files)
    names = [p.split(" ")[1] for p in shape_of(ref_files.values()) if _is_message(p)]
    for name in names:
        ref_class = message_class(ref_pool, name)
        our_class = message_class(our_pool, name)
        for variant in range(variant_count(ref_class.DESCRIPTOR)):
            sent = fill(ref_class(), variant).SerializeToString(deterministic=True)
            received = our_class.FromString(sent)
            # A field that ours did not know would survive as an unknown field and
            # make the bytes match anyway: drop those before comparing.
            received.DiscardUnknownFields()
            assert received.SerializeToString(deterministic=True) == sent, name
            assert received.ByteSize() > 0 or not ref_class.DESCRIPTOR.fields, name


def _is_message(path: str) -> bool:
    return path.startswith("message ") and path.count(" ") == 1
