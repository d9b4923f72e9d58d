"""The Authentication service of a control plane that authenticates no one."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import ServiceDescriptor

from agent.control._requests import Context
from gridpod_api import auth_common_pb2, auth_service_pb2_grpc

__all__ = ["AuthenticationService", "permissions"]

_ANONYMOUS = "Anonymous"

# Not a method: the right to act as another user, which ArmoniK also grants.
_IMPERSONATE = "General:Impersonate"


def permissions(services: Iterable[ServiceDescriptor]) -> list[str]:
    """ArmoniK's name of the right to call each method: ``Service:Method``."""
    names = [
        f"{service.name}:{method.name}"
        for service in services
        for method in service.methods
    ]
    return [*names, _IMPERSONATE]


class AuthenticationService(auth_service_pb2_grpc.AuthenticationServicer):
    """Every caller is the anonymous user, with no role and every permission, as
    ArmoniK answers when its authentication is disabled."""

    def __init__(self, granted: Iterable[str]) -> None:
        self._user = auth_common_pb2.User(
            username=_ANONYMOUS, roles=[], permissions=list(granted)
        )

    async def GetCurrentUser(
        self, request: auth_common_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_common_pb2.GetCurrentUserResponse:
        return auth_common_pb2.GetCurrentUserResponse(user=self._user)
