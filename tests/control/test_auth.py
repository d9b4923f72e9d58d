"""The Authentication service: the anonymous user, with every permission."""

from __future__ import annotations

from agent.control import SERVED_SERVICES
from gridpod_api import (
    auth_common_pb2,
    auth_service_pb2_grpc,
    sessions_service_pb2,
    submitter_service_pb2,
)
from tests.control.conftest import RunningControlPlane


async def current_user(plane: RunningControlPlane) -> auth_common_pb2.User:
    stub = auth_service_pb2_grpc.AuthenticationStub(plane.channel)
    reply = await stub.GetCurrentUser(auth_common_pb2.GetCurrentUserRequest())
    return reply.user


async def test_anonymous_with_no_role(control_plane: RunningControlPlane) -> None:
    user = await current_user(control_plane)
    assert user.username == "Anonymous"
    assert list(user.roles) == []


async def test_every_permission_in_armonik_s_names(
    control_plane: RunningControlPlane,
) -> None:
    permissions = set((await current_user(control_plane)).permissions)
    assert {
        "Submitter:CreateSession",
        "Submitter:WatchResults",
        "Sessions:CancelSession",
        "Tasks:ListTasks",
        "Results:GetOwnerTaskId",
        "Applications:ListApplications",
        "Events:GetEvents",
        "Authentication:GetCurrentUser",
        "General:Impersonate",
    } <= permissions
    submitter = submitter_service_pb2.DESCRIPTOR.services_by_name["Submitter"]
    sessions = sessions_service_pb2.DESCRIPTOR.services_by_name["Sessions"]
    for service in (submitter, sessions):
        for method in service.methods:
            assert f"{service.name}:{method.name}" in permissions
    # One per method of each served service, and impersonation.
    served = {name.rpartition(".")[2] for name in SERVED_SERVICES}
    assert {p.partition(":")[0] for p in permissions} == served | {"General"}
