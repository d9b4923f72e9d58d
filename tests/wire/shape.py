"""Reduce file descriptors to what decides wire compatibility, and compare two sets.

A shape maps a path such as ``message armonik.api.grpc.v1.DataChunk field 2`` to the
facts that must agree on both sides: for a field its name, type, label and oneof; for
an enum value its number; for a method its types and streaming flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import descriptor_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto
Shape = dict[str, tuple[object, ...]]


def _field_facts(
    message: descriptor_pb2.DescriptorProto, field: FieldProto
) -> tuple[object, ...]:
    # A proto3 ``optional`` lives in a synthetic oneof; it is a presence flag, not a
    # oneof of the wire, so it is reported apart from real oneofs.
    in_oneof = field.HasField("oneof_index") and not field.proto3_optional
    oneof = message.oneof_decl[field.oneof_index].name if in_oneof else None
    return (
        field.name,
        FieldProto.Type.Name(field.type),
        field.type_name,
        FieldProto.Label.Name(field.label),
        f"oneof={oneof}",
        f"optional={field.proto3_optional}",
    )


def _enum_shape(
    scope: str, enum: descriptor_pb2.EnumDescriptorProto, out: Shape
) -> None:
    name = f"{scope}.{enum.name}"
    out[f"enum {name}"] = ()
    for value in enum.value:
        out[f"enum {name} value {value.name}"] = (value.number,)


def _message_shape(
    scope: str, message: descriptor_pb2.DescriptorProto, file: str, out: Shape
) -> None:
    name = f"{scope}.{message.name}"
    out[f"message {name}"] = (f"file={file}", f"map_entry={message.options.map_entry}")
    for field in message.field:
        out[f"message {name} field {field.number}"] = _field_facts(message, field)
    for nested in message.nested_type:
        _message_shape(name, nested, file, out)
    for enum in message.enum_type:
        _enum_shape(name, enum, out)


def _service_shape(
    package: str, service: descriptor_pb2.ServiceDescriptorProto, out: Shape
) -> None:
    name = f"{package}.{service.name}"
    out[f"service {name}"] = ()
    for method in service.method:
        out[f"service {name} method {method.name}"] = (
            method.input_type,
            method.output_type,
            f"client_streaming={method.client_streaming}",
            f"server_streaming={method.server_streaming}",
        )


def shape_of(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> Shape:
    out: Shape = {}
    for file in files:
        out[f"file {file.name}"] = (f"package={file.package}",)
        for message in file.message_type:
            _message_shape(file.package, message, file.name, out)
        for enum in file.enum_type:
            _enum_shape(file.package, enum, out)
        for service in file.service:
            _service_shape(file.package, service, out)
    return out


def differences(
    ours: Mapping[str, object], reference: Mapping[str, object]
) -> set[str]:
    """Every path that is missing on one side or whose facts disagree."""
    found = set()
    for path in ours.keys() | reference.keys():
        if path not in reference:
            found.add(f"{path}: only in ours {ours[path]}")
        elif path not in ours:
            found.add(f"{path}: missing from ours, reference has {reference[path]}")
        elif ours[path] != reference[path]:
            found.add(f"{path}: ours {ours[path]} != reference {reference[path]}")
    return found
