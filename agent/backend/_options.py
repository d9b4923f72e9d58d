"""Task options merged field by field over a session's defaults."""

from __future__ import annotations

from gridpod_api import objects_pb2

__all__ = ["merge_options"]

# Every plain field of TaskOptions: ints and strings, where zero or empty means unset.
_SCALAR_FIELDS = tuple(
    field.name
    for field in objects_pb2.TaskOptions.DESCRIPTOR.fields
    if field.message_type is None
)


def merge_options(
    defaults: objects_pb2.TaskOptions, options: objects_pb2.TaskOptions | None
) -> objects_pb2.TaskOptions:
    """``options`` over ``defaults``: each field left unset takes the default.

    A scalar is unset when it is zero or empty (proto3 cannot tell them apart), the
    ``options`` map merges key by key, and ``max_duration`` is unset when absent.
    """
    merged = objects_pb2.TaskOptions()
    merged.CopyFrom(defaults)
    if options is None:
        return merged
    merged.options.update(options.options)
    if options.HasField("max_duration"):
        merged.max_duration.CopyFrom(options.max_duration)
    for name in _SCALAR_FIELDS:
        value = getattr(options, name)
        if value:
            setattr(merged, name, value)
    return merged
