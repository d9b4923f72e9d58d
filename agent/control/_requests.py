"""Reading the requests of listings (pages, sorts, enums, time bounds) and answering
a refused request with its status."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from agent.control._status import RequestRefused, abort, backend_errors, invalid

__all__ = [
    "Context",
    "Window",
    "enum_value",
    "matching",
    "not_found",
    "refusing",
    "required_id",
    "sort_order",
    "status_filter",
    "time_bound",
    "window",
]

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Key = TypeVar("_Key")
_Status = TypeVar("_Status", bound=IntEnum)

# ORDER_DIRECTION_DESC, the same number in every listing's OrderDirection.
_DESCENDING = 2


def refusing(
    handler: Callable[[_Servicer, _Request, Context], Awaitable[_Response]],
) -> Callable[[_Servicer, _Request, Context], Coroutine[Any, Any, _Response]]:
    """Answer a refused request, or a backend error, with its status."""

    @functools.wraps(handler)
    async def answer(servicer: _Servicer, request: _Request, context: Context) -> Any:
        try:
            with backend_errors():
                return await handler(servicer, request, context)
        except RequestRefused as refused:
            logger.info(
                "refused %s: %s: %s",
                handler.__name__,
                refused.code.name,
                refused.details,
                extra={"rpc": handler.__name__, "code": refused.code.name},
            )
            await abort(context, refused)

    return answer


def not_found(details: str) -> NoReturn:
    raise RequestRefused(grpc.StatusCode.NOT_FOUND, details)


def required_id(value: str, field: str) -> str:
    if not value:
        invalid(f"{field} is empty: name the one to use")
    return value


@dataclass(frozen=True)
class Window:
    """The records of one page: ``limit`` of them from ``offset`` on."""

    offset: int
    limit: int


def window(page: int, page_size: int, max_page_size: int) -> Window:
    """The page ``page`` (from 0) of ``page_size`` records."""
    if page < 0:
        invalid(f"page must be 0 or more (pages start at 0), not {page}")
    if page_size < 1:
        invalid(f"page_size must be positive, not {page_size}")
    if page_size > max_page_size:
        invalid(f"page_size must be at most {max_page_size}, not {page_size}")
    return Window(page * page_size, page_size)


def enum_value(value: int, enum: EnumDescriptor, field: str) -> int:
    """``value``, refused unless ``enum`` names it: proto3 lets any number through."""
    if value not in enum.values_by_number:
        invalid(f"{field} {value} is not a value of {enum.full_name}")
    return value


def matching(value: str) -> tuple[str, ...]:
    """The values a string filter field keeps: any when it is empty."""
    return (value,) if value else ()


def status_filter(
    value: int, enum: EnumDescriptor, stored: type[_Status], field: str
) -> tuple[_Status, ...] | None:
    """The statuses a filter keeps: any for an unspecified one, and None (nothing
    matches) for a status of the API that the backend never stores."""
    if enum_value(value, enum, field) == 0:
        return ()
    try:
        return (stored(value),)
    except ValueError:
        return None


def sort_order(
    request: Message, keys: Mapping[int, _Key], default: _Key
) -> tuple[_Key, bool]:
    """The sort key and whether it is descending.

    An absent sort, or an unspecified field or direction, sorts by ``default``
    ascending, as ArmoniK does for clients that send no sort.
    """
    if not request.HasField("sort"):
        return default, False
    sort: Any = getattr(request, "sort")  # noqa: B009 - any listing's own Sort type
    fields = sort.DESCRIPTOR.fields_by_name
    field = enum_value(sort.field, fields["field"].enum_type, "sort.field")
    direction = enum_value(
        sort.direction,
        fields["direction"].enum_type,
        "sort.direction",
    )
    return keys.get(field, default), direction == _DESCENDING


def time_bound(message: Message, field: str) -> datetime | None:
    """The moment a Timestamp field names, None when it is not set."""
    if not message.HasField(field):
        return None
    moment: datetime = getattr(message, field).ToDatetime(tzinfo=timezone.utc)
    return moment
