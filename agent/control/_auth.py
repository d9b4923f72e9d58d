"""The Authentication service: who the caller is, with its roles and permissions."""

from __future__ import annotations

from agent.control._access import Access
from agent.control._requests import Context, refusing
from gridpod_api import auth_common_pb2, auth_service_pb2_grpc

__all__ = ["AuthenticationService"]


class AuthenticationService(auth_service_pb2_grpc.AuthenticationServicer):
    """The caller as ``access`` identifies it: without authentication, the
    anonymous user with no role and every permission, as ArmoniK answers when its
    authentication is disabled."""

    def __init__(self, access: Access) -> None:
        self._access = access

    @refusing
    async def GetCurrentUser(
        self, request: auth_common_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_common_pb2.GetCurrentUserResponse:
        caller = self._access.identified(context)
        return auth_common_pb2.GetCurrentUserResponse(
            user=auth_common_pb2.User(
                username=caller.name,
                roles=caller.roles,
                permissions=caller.permissions,
            )
        )
