"""Fully populated messages, so that every field of a type crosses the wire once."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# types-protobuf gives descriptors as a union of the pure-Python and the upb classes,
# which share no base class it declares; both behave the same here.
Descriptor = Any
Field = Any

_MAX_DEPTH = 4

_SCALARS: dict[int, object] = {
    FieldDescriptor.TYPE_STRING: "text-é",
    FieldDescriptor.TYPE_BYTES: b"\x00\xffbytes",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_INT32: -7,
    FieldDescriptor.TYPE_INT64: 1 << 40,
    FieldDescriptor.TYPE_UINT32: 7,
    FieldDescriptor.TYPE_UINT64: 1 << 40,
    FieldDescriptor.TYPE_SINT32: -9,
    FieldDescriptor.TYPE_SINT64: -(1 << 40),
    FieldDescriptor.TYPE_DOUBLE: 1.5,
    FieldDescriptor.TYPE_FLOAT: 2.5,
    FieldDescriptor.TYPE_FIXED32: 11,
    FieldDescriptor.TYPE_FIXED64: 13,
    FieldDescriptor.TYPE_SFIXED32: -11,
    FieldDescriptor.TYPE_SFIXED64: -13,
}


def variant_count(descriptor: Descriptor) -> int:
    """How many messages it takes to set every member of every oneof once."""
    sizes = [len(o.fields) for o in descriptor.oneofs if len(o.fields) > 1]
    return max(sizes, default=1)


def _scalar(field: Field) -> object:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    return _SCALARS[field.type]


def _chosen(field: Field, variant: int) -> bool:
    oneof = field.containing_oneof
    if oneof is None or len(oneof.fields) == 1:
        return True
    return oneof.fields[variant % len(oneof.fields)] is field


def fill(message: Message, variant: int = 0, depth: int = 0) -> Message:
    """Set every field of ``message``, and the ``variant``-th member of each oneof."""
    for field in message.DESCRIPTOR.fields:
        if _chosen(field, variant):
            _set(message, field, variant, depth)
    return message


def _set(message: Message, field: Field, variant: int, depth: int) -> None:
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields
        container = getattr(message, field.name)
        key = _scalar(key_field)
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            fill(container[key], variant, depth + 1)
        else:
            container[key] = _scalar(value_field)
    elif is_message and depth >= _MAX_DEPTH:
        return
    elif is_message and field.is_repeated:
        for _ in range(2):
            fill(getattr(message, field.name).add(), variant, depth + 1)
    elif is_message:
        getattr(message, field.name).SetInParent()
        fill(getattr(message, field.name), variant, depth + 1)
    elif field.is_repeated:
        getattr(message, field.name).extend([_scalar(field)] * 2)
    else:
        setattr(message, field.name, _scalar(field))
