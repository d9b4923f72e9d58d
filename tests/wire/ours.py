"""The descriptors of our generated package, and message classes built from any set."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import Message

import gridpod_api

_WELL_KNOWN = (duration_pb2, empty_pb2, timestamp_pb2)


def our_descriptors() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = {}
    for module_info in pkgutil.iter_modules(gridpod_api.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"gridpod_api.{module_info.name}")
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files[proto.name] = proto
    return files


def private_pool(
    files: Mapping[str, descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """A pool of its own holding ``files``, added in dependency order."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for module in _WELL_KNOWN:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
        added.add(proto.name)

    def add(name: str) -> None:
        if name in added:
            return
        for dependency in files[name].dependency:
            add(dependency)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    return pool


def message_class(
    pool: descriptor_pool.DescriptorPool, full_name: str
) -> type[Message]:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
