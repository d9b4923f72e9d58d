"""Who calls the control plane, and whether they may: the anonymous user when
authentication is off, else the user that the client certificate names, each call
checked by a server interceptor against the permission its method needs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from agent.control._policy import (
    SEE_ALL_SESSIONS,
    AuthConfig,
    granted,
    method_permissions,
    permissions,
)
from agent.control._status import RequestRefused
from worker_sdk._listen import checked_handler

__all__ = ["ANONYMOUS", "Access", "Caller"]

logger = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]

ANONYMOUS = "Anonymous"

# Where gRPC puts what the peer's certificate says, in its auth context.
_COMMON_NAME = "x509_common_name"
_ALTERNATIVE_NAMES = "x509_subject_alternative_name"


@dataclass(frozen=True)
class Caller:
    """A user of the control plane, with its roles and permissions."""

    name: str
    roles: tuple[str, ...]
    # In ArmoniK's names, in the order of the API.
    permissions: tuple[str, ...]
    # Recorded as the owner of the sessions it creates: "" for the anonymous user,
    # as sessions were before there were users.
    owner: str
    _granted: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_granted", frozenset(self.permissions))

    def may(self, permission: str) -> bool:
        return permission in self._granted

    @property
    def sees_all_sessions(self) -> bool:
        return SEE_ALL_SESSIONS in self._granted


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """The names the peer's certificate gives: its subject CN, then its SANs."""
    names = [
        *auth_context.get(_COMMON_NAME, ()),
        *auth_context.get(_ALTERNATIVE_NAMES, ()),
    ]
    return tuple(dict.fromkeys(name.decode(errors="replace") for name in names if name))


class Access:
    """How callers are identified, and what each may do.

    Without authentication, every caller is the anonymous user with every
    permission, as ArmoniK answers when its authentication is disabled. With it,
    the client's certificate names the user: the first of its subject CN and SANs
    that ``config`` lists, else the CN (or the first SAN), with no role. Without a
    ``config``, every user a certificate names has every permission.
    """

    def __init__(
        self,
        services: Iterable[ServiceDescriptor] = (),
        *,
        authenticate: bool = False,
        config: AuthConfig | None = None,
    ) -> None:
        services = list(services)
        self._required = method_permissions(services)
        self._known = permissions(services)
        self.authenticates = authenticate
        self._config = config
        if config is not None:
            config.check(self._known)
        self._roles = {
            role: frozenset(granted(patterns, self._known))
            for role, patterns in (config.roles.items() if config else ())
        }
        self._anonymous = Caller(ANONYMOUS, (), tuple(self._known), owner="")
        # By the names of a certificate: one per client certificate in use.
        self._callers: dict[tuple[str, ...], Caller] = {}

    def caller(self, context: _Context) -> Caller | None:
        """Who makes the call; None when authentication is on and no certificate
        names the caller."""
        if not self.authenticates:
            return self._anonymous
        names = certificate_names(context.auth_context())
        if not names:
            return None
        found = self._callers.get(names)
        if found is None:
            found = self._callers[names] = self._identify(names)
        return found

    def identified(self, context: _Context) -> Caller:
        """Who makes the call; refused with UNAUTHENTICATED when no one is named."""
        caller = self.caller(context)
        if caller is None:
            raise RequestRefused(grpc.StatusCode.UNAUTHENTICATED, _UNNAMED)
        return caller

    def _identify(self, names: tuple[str, ...]) -> Caller:
        config = self._config
        if config is None:
            return Caller(names[0], (), tuple(self._known), owner=names[0])
        name = next((name for name in names if name in config.users), names[0])
        roles = config.users.get(name, ())
        allowed = frozenset().union(*(self._roles[role] for role in roles))
        return Caller(
            name,
            roles,
            tuple(permission for permission in self._known if permission in allowed),
            owner=name,
        )

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Checks, before anything else of a call to the API, that the caller may
        make it: UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        return _CheckPermissions(self, self._required)

    async def check(self, permission: str, context: _Context) -> None:
        """Abort the call unless the caller has ``permission``."""
        caller = self.caller(context)
        if caller is None:
            logger.info("refused a call from %s: %s", context.peer(), _UNNAMED)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNNAMED)
        elif not caller.may(permission):
            logger.info(
                "refused %s to user %s: no such permission",
                permission,
                caller.name,
                extra={"rpc": permission, "user": caller.name},
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"user {caller.name!r} lacks the permission {permission}: it "
                f"needs a role that grants it",
            )


_UNNAMED = (
    "the client certificate names no user (it has no subject CN and no SAN): "
    "present one that does"
)


class _CheckPermissions(grpc.aio.ServerInterceptor):
    """The permission check of every method of the API; health checking and
    reflection, which are no part of it, have only the TLS handshake."""

    def __init__(self, access: Access, required: Mapping[str, str]) -> None:
        self._access = access
        self._required = required
        # Method -> its handler and the checked one, built once per method.
        self._built: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        permission = self._required.get(method)
        if handler is None or permission is None:
            return handler
        built = self._built.get(method)
        if built is None or built[0] is not handler:
            check = functools.partial(self._access.check, permission)
            built = (handler, checked_handler(handler, check))
            self._built[method] = built
        return built[1]
