"""TLS and authentication on the control plane: real servers on free ports, with
certificates made for the test.

Users are named by their client certificates; a permissions file gives them
roles; a user sees only the sessions it created, unless a role lets it see all.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.backend import Backend, open_backend
from agent.control import (
    PERMISSIONS,
    SEE_ALL_SESSIONS,
    AuthConfig,
    AuthConfigError,
    ControlPlane,
    ControlPlaneConfig,
)
from gridpod_api import (
    auth_common_pb2,
    auth_service_pb2_grpc,
    events_common_pb2,
    events_service_pb2_grpc,
    objects_pb2,
    result_status_pb2,
    results_common_pb2,
    results_service_pb2_grpc,
    sessions_common_pb2,
    sessions_service_pb2_grpc,
    submitter_common_pb2,
    submitter_service_pb2_grpc,
    tasks_common_pb2,
    tasks_service_pb2_grpc,
)
from tests.control.certificates import Issued, Pki, make_pki
from tests.control.conftest import ROOT, spawn_control_plane
from worker_sdk._address import Address, ServerTls
from worker_sdk.client import AccessDeniedError, AsyncClient, NotFoundError, TaskSpec

Common = submitter_common_pb2

_SUBMITTING = [
    "Submitter:*",
    "Sessions:*",
    "Tasks:*",
    "Results:*",
    "Events:*",
    "Authentication:GetCurrentUser",
]
RULES: dict[str, Any] = {
    "roles": {
        "submitter": _SUBMITTING,
        "reader": ["Sessions:GetSession", "Sessions:ListSessions"],
        "auditor": ["Sessions:*", "Submitter:ListSessions", SEE_ALL_SESSIONS],
        "whoami": ["Authentication:GetCurrentUser"],
    },
    "users": {
        "alice": ["submitter"],
        "bob": ["submitter"],
        "carol": ["auditor", "whoami"],
        "rita": ["reader", "whoami"],
    },
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Plane:
    """A control plane on 127.0.0.1, and the test's own view of its backend."""

    address: str
    backend: Backend
    pki: Pki

    def channel(
        self, user: str | Issued | None = None, ca: Path | None = None
    ) -> grpc.aio.Channel:
        """A TLS channel trusting ``ca`` (the grid's by default), presenting the
        certificate of ``user`` (none for None)."""
        issued = self.pki.client(user) if isinstance(user, str) else user
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(ca or self.pki.ca.cert).read_bytes(),
            private_key=None if issued is None else issued.key.read_bytes(),
            certificate_chain=None if issued is None else issued.cert.read_bytes(),
        )
        return grpc.aio.secure_channel(self.address, credentials)


@contextlib.asynccontextmanager
async def serving(
    folder: Path, pki: Pki, *, client_ca: bool, rules: dict[str, Any] | None = None
) -> AsyncIterator[Plane]:
    url = f"sqlite://{folder / 'state.db'}"
    served, ours = open_backend(url), open_backend(url)
    config = ControlPlaneConfig(
        tls=ServerTls(
            cert=pki.server.cert,
            key=pki.server.key,
            client_ca=pki.ca.cert if client_ca else None,
        ),
        auth=None if rules is None else AuthConfig.from_data(rules),
    )
    plane = ControlPlane(served, config, Address("tcp", "127.0.0.1:0"))
    await plane.start()
    try:
        yield Plane(str(plane.bound_address), ours, pki)
    finally:
        await plane.stop(0.2)
        await served.close()
        await ours.close()


@pytest.fixture
async def tls_only(tmp_path: Path, pki: Pki) -> AsyncIterator[Plane]:
    async with serving(tmp_path, pki, client_ca=False) as plane:
        yield plane


@pytest.fixture
async def mutual(tmp_path: Path, pki: Pki) -> AsyncIterator[Plane]:
    async with serving(tmp_path, pki, client_ca=True, rules=RULES) as plane:
        yield plane


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def whoami(channel: grpc.aio.Channel) -> auth_common_pb2.User:
    stub = auth_service_pb2_grpc.AuthenticationStub(channel)
    reply = await stub.GetCurrentUser(auth_common_pb2.GetCurrentUserRequest())
    return reply.user


async def create_session(channel: grpc.aio.Channel) -> str:
    stub = submitter_service_pb2_grpc.SubmitterStub(channel)
    request = Common.CreateSessionRequest(default_task_option=objects_pb2.TaskOptions())
    return (await stub.CreateSession(request, timeout=5)).session_id


def small_tasks(session_id: str) -> Common.CreateSmallTaskRequest:
    task = objects_pb2.TaskRequest(expected_output_keys=["out"], payload=b"x")
    return Common.CreateSmallTaskRequest(session_id=session_id, task_requests=[task])


# -- TLS ---------------------------------------------------------------------------


async def test_tls_serves_a_client_trusting_its_ca(tls_only: Plane) -> None:
    async with tls_only.channel() as channel:
        user = await whoami(channel)
    # TLS alone authenticates no one: as without TLS.
    assert user.username == "Anonymous"
    assert list(user.permissions) == list(PERMISSIONS)


async def test_a_plaintext_client_is_refused(tls_only: Plane) -> None:
    async with grpc.aio.insecure_channel(tls_only.address) as channel:
        stub = auth_service_pb2_grpc.AuthenticationStub(channel)
        code, _ = await refusal(
            stub.GetCurrentUser(auth_common_pb2.GetCurrentUserRequest(), timeout=5)
        )
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(tls_only: Plane) -> None:
    async with tls_only.channel(ca=tls_only.pki.stranger.cert) as channel:
        stub = auth_service_pb2_grpc.AuthenticationStub(channel)
        code, _ = await refusal(
            stub.GetCurrentUser(auth_common_pb2.GetCurrentUserRequest(), timeout=5)
        )
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_client_without_certificate(mutual: Plane) -> None:
    async with mutual.channel() as channel:
        code, _ = await refusal(create_session(channel))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


async def test_mutual_tls_refuses_a_certificate_of_another_ca(
    mutual: Plane, pki: Pki
) -> None:
    forged = pki.stranger.client("forged-alice", "alice")
    async with mutual.channel(forged) as channel:
        code, _ = await refusal(create_session(channel))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_certificate_naming_no_one_is_unauthenticated(
    mutual: Plane, pki: Pki
) -> None:
    nameless = pki.ca.client("nameless", None)
    async with mutual.channel(nameless) as channel:
        code, details = await refusal(create_session(channel))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "names no user" in details


# -- identity and permissions -------------------------------------------------------


async def test_current_user_has_its_name_roles_and_permissions(mutual: Plane) -> None:
    async with mutual.channel("rita") as channel:
        user = await whoami(channel)
    assert user.username == "rita"
    assert list(user.roles) == ["reader", "whoami"]
    assert list(user.permissions) == [
        "Sessions:ListSessions",
        "Sessions:GetSession",
        "Authentication:GetCurrentUser",
    ]


async def test_wildcards_grant_a_service_or_everything(mutual: Plane) -> None:
    async with mutual.channel("alice") as channel:
        user = await whoami(channel)
    granted = set(user.permissions)
    assert {p for p in PERMISSIONS if p.startswith("Submitter:")} <= granted
    assert "Applications:ListApplications" not in granted
    assert SEE_ALL_SESSIONS not in granted


async def test_a_user_without_the_permission_is_denied(mutual: Plane) -> None:
    async with mutual.channel("rita") as channel:
        code, details = await refusal(create_session(channel))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'rita'" in details
    assert "Submitter:CreateSession" in details


async def test_a_user_the_file_does_not_list_has_no_permission(mutual: Plane) -> None:
    async with mutual.channel("mallory") as channel:
        code, details = await refusal(whoami(channel))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'mallory'" in details
    assert "Authentication:GetCurrentUser" in details


async def test_a_subject_alternative_name_can_name_the_user(
    mutual: Plane, pki: Pki
) -> None:
    # The CN names no user of the file; the SAN does.
    service = pki.ca.client("service", "service-7", sans=["alice"])
    async with mutual.channel(service) as channel:
        assert (await whoami(channel)).username == "alice"


async def test_health_checks_need_only_the_handshake(mutual: Plane) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    async with mutual.channel("mallory") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest()
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_without_a_permissions_file_every_user_may_do_everything(
    tmp_path: Path, pki: Pki
) -> None:
    async with (
        serving(tmp_path, pki, client_ca=True) as plane,
        plane.channel("dave") as channel,
    ):
        user = await whoami(channel)
        session_id = await create_session(channel)
        record = await plane.backend.get_session(session_id)
    assert user.username == "dave"
    assert list(user.permissions) == list(PERMISSIONS)
    assert record.owner == "dave"


# -- sessions by owner ---------------------------------------------------------------


@dataclass
class TwoUsers:
    plane: Plane
    alice: grpc.aio.Channel
    bob: grpc.aio.Channel
    # Alice's session, with one task.
    session_id: str
    task_id: str


@pytest.fixture
async def two_users(mutual: Plane) -> AsyncIterator[TwoUsers]:
    async with mutual.channel("alice") as alice, mutual.channel("bob") as bob:
        session_id = await create_session(alice)
        reply = await submitter_service_pb2_grpc.SubmitterStub(alice).CreateSmallTasks(
            small_tasks(session_id)
        )
        [status] = reply.creation_status_list.creation_statuses
        yield TwoUsers(mutual, alice, bob, session_id, status.task_info.task_id)


async def test_a_session_is_owned_by_its_creator(two_users: TwoUsers) -> None:
    record = await two_users.plane.backend.get_session(two_users.session_id)
    assert record.owner == "alice"


async def _same_as_unknown(call: Any, request: Any, field: str, real_id: str) -> None:
    """The call answers NOT_FOUND for ``real_id`` as for an id that does not exist."""
    code, details = await refusal(call(request))
    unknown = "0" * len(real_id)
    _set(request, field, unknown)
    unknown_code, unknown_details = await refusal(call(request))
    assert code == unknown_code == grpc.StatusCode.NOT_FOUND
    assert details == unknown_details.replace(unknown, real_id)


def _set(message: Any, field: str, value: str) -> None:
    target = getattr(message, field)
    if isinstance(target, str):
        setattr(message, field, value)
    else:
        del target[:]
        target.append(value)


async def test_another_user_s_session_is_as_one_that_does_not_exist(
    two_users: TwoUsers,
) -> None:
    bob, session_id = two_users.bob, two_users.session_id
    sessions = sessions_service_pb2_grpc.SessionsStub(bob)
    submitter = submitter_service_pb2_grpc.SubmitterStub(bob)
    results = results_service_pb2_grpc.ResultsStub(bob)
    for call, request, field in (
        (
            sessions.GetSession,
            sessions_common_pb2.GetSessionRequest(session_id=session_id),
            "session_id",
        ),
        (
            sessions.CancelSession,
            sessions_common_pb2.CancelSessionRequest(session_id=session_id),
            "session_id",
        ),
        (submitter.CreateSmallTasks, small_tasks(session_id), "session_id"),
        (submitter.CancelSession, objects_pb2.Session(id=session_id), "id"),
        (
            submitter.GetResultStatus,
            Common.GetResultStatusRequest(session_id=session_id, result_ids=["out"]),
            "session_id",
        ),
        (
            submitter.WaitForAvailability,
            objects_pb2.ResultRequest(session=session_id, result_id="out"),
            "session",
        ),
        (
            results.GetOwnerTaskId,
            results_common_pb2.GetOwnerTaskIdRequest(
                session_id=session_id, result_id=["out"]
            ),
            "session_id",
        ),
    ):
        await _same_as_unknown(call, request, field, session_id)


async def test_another_user_s_task_is_as_one_that_does_not_exist(
    two_users: TwoUsers,
) -> None:
    bob, task_id = two_users.bob, two_users.task_id
    tasks = tasks_service_pb2_grpc.TasksStub(bob)
    submitter = submitter_service_pb2_grpc.SubmitterStub(bob)
    for call, request, field in (
        (tasks.GetTask, tasks_common_pb2.GetTaskRequest(task_id=task_id), "task_id"),
        (
            tasks.GetResultIds,
            tasks_common_pb2.GetResultIdsRequest(task_id=[task_id]),
            "task_id",
        ),
        (
            submitter.GetTaskStatus,
            Common.GetTaskStatusRequest(task_ids=[task_id]),
            "task_ids",
        ),
        (
            submitter.TryGetTaskOutput,
            objects_pb2.TaskOutputRequest(task_id=task_id),
            "task_id",
        ),
    ):
        await _same_as_unknown(call, request, field, task_id)


async def test_listings_leave_out_another_user_s_sessions(two_users: TwoUsers) -> None:
    bob = two_users.bob
    own = await create_session(bob)
    sessions = await sessions_service_pb2_grpc.SessionsStub(bob).ListSessions(
        sessions_common_pb2.ListSessionsRequest(page_size=10)
    )
    assert [s.session_id for s in sessions.sessions] == [own]
    assert sessions.total == 1
    submitter = submitter_service_pb2_grpc.SubmitterStub(bob)
    ids = await submitter.ListSessions(Common.SessionFilter())
    assert list(ids.session_ids) == [own]
    tasks = await tasks_service_pb2_grpc.TasksStub(bob).ListTasks(
        tasks_common_pb2.ListTasksRequest(page_size=10)
    )
    assert (tasks.total, list(tasks.tasks)) == (0, [])
    results = await results_service_pb2_grpc.ResultsStub(bob).ListResults(
        results_common_pb2.ListResultsRequest(page_size=10)
    )
    assert results.total == 0
    by_session = Common.TaskFilter(
        session=Common.TaskFilter.IdsRequest(ids=[two_users.session_id])
    )
    assert list((await submitter.ListTasks(by_session)).task_ids) == []
    assert list((await submitter.CountTasks(by_session)).values) == []


async def test_another_user_cannot_cancel_or_follow_the_session(
    two_users: TwoUsers,
) -> None:
    bob, session_id = two_users.bob, two_users.session_id
    await tasks_service_pb2_grpc.TasksStub(bob).CancelTasks(
        tasks_common_pb2.CancelTasksRequest(task_ids=[two_users.task_id])
    )
    task = await two_users.plane.backend.get_task(two_users.task_id)
    assert not task.status.is_final
    events = events_service_pb2_grpc.EventsStub(bob).GetEvents(
        events_common_pb2.EventSubscriptionRequest(session_id=session_id)
    )
    code, _ = await refusal(anext(aiter(events)))
    assert code == grpc.StatusCode.NOT_FOUND
    watch = submitter_service_pb2_grpc.SubmitterStub(bob).WatchResults(
        iter([Common.WatchResultRequest(result_ids=["out"])])
    )
    first = await anext(aiter(watch))
    assert first.status == result_status_pb2.RESULT_STATUS_NOTFOUND
    assert list(first.result_ids) == ["out"]


async def test_the_owner_sees_its_session(two_users: TwoUsers) -> None:
    alice = two_users.alice
    reply = await sessions_service_pb2_grpc.SessionsStub(alice).GetSession(
        sessions_common_pb2.GetSessionRequest(session_id=two_users.session_id)
    )
    assert reply.session.session_id == two_users.session_id
    tasks = await tasks_service_pb2_grpc.TasksStub(alice).ListTasks(
        tasks_common_pb2.ListTasksRequest(page_size=10)
    )
    assert [t.id for t in tasks.tasks] == [two_users.task_id]


async def test_a_role_that_sees_all_sees_every_session(two_users: TwoUsers) -> None:
    async with two_users.plane.channel("carol") as carol:
        sessions = sessions_service_pb2_grpc.SessionsStub(carol)
        reply = await sessions.GetSession(
            sessions_common_pb2.GetSessionRequest(session_id=two_users.session_id)
        )
        listing = await sessions.ListSessions(
            sessions_common_pb2.ListSessionsRequest(page_size=10)
        )
        ids = await submitter_service_pb2_grpc.SubmitterStub(carol).ListSessions(
            Common.SessionFilter()
        )
    assert reply.session.session_id == two_users.session_id
    assert [s.session_id for s in listing.sessions] == [two_users.session_id]
    assert list(ids.session_ids) == [two_users.session_id]


# -- the Python client -----------------------------------------------------------


async def test_the_client_speaks_mutual_tls(mutual: Plane, pki: Pki) -> None:
    alice, bob = pki.client("alice"), pki.client("bob")
    async with AsyncClient(
        mutual.address, tls_ca=pki.ca.cert, tls_cert=alice.cert, tls_key=alice.key
    ) as client:
        session = await client.create_session()
        [task] = await session.submit([TaskSpec(b"payload")])
    record = await mutual.backend.get_task(task.task_id)
    assert record.session_id == session.session_id
    async with AsyncClient(
        mutual.address, tls_ca=pki.ca.cert, tls_cert=bob.cert, tls_key=bob.key
    ) as client:
        with pytest.raises(NotFoundError):
            await client.open_session(session.session_id)
    rita = pki.client("rita")
    async with AsyncClient(
        mutual.address, tls_ca=pki.ca.cert, tls_cert=rita.cert, tls_key=rita.key
    ) as client:
        with pytest.raises(AccessDeniedError, match="Submitter:CreateSession"):
            await client.create_session()


def test_the_client_refuses_tls_on_a_unix_socket(pki: Pki) -> None:
    with pytest.raises(ValueError, match="unix socket"):
        AsyncClient("unix:///tmp/control.sock", tls_ca=pki.ca.cert)


# -- the permissions file ----------------------------------------------------------


def test_a_permission_that_does_not_exist_is_refused() -> None:
    config = AuthConfig.from_data(
        {"roles": {"typo": ["Submitter:CreateSesion"]}, "users": {}}
    )
    with pytest.raises(AuthConfigError, match="'Submitter:CreateSesion'"):
        config.check(PERMISSIONS)


def test_a_user_with_an_undefined_role_is_refused() -> None:
    with pytest.raises(AuthConfigError, match="admin"):
        AuthConfig.from_data({"roles": {}, "users": {"alice": ["admin"]}})


def test_yaml_and_json_files_read_alike(tmp_path: Path) -> None:
    yaml_file = tmp_path / "auth.yaml"
    yaml_file.write_text(
        "roles:\n  submitter: ['Submitter:*']\nusers:\n  alice: [submitter]\n"
    )
    json_file = tmp_path / "auth.json"
    json_file.write_text(
        json.dumps(
            {"roles": {"submitter": ["Submitter:*"]}, "users": {"alice": ["submitter"]}}
        )
    )
    assert AuthConfig.read(yaml_file) == AuthConfig.read(json_file)


def test_a_malformed_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "auth.json"
    broken.write_text('{"roles": ')
    with pytest.raises(AuthConfigError, match=r"auth\.json does not parse"):
        AuthConfig.read(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"roles": {"r": "Submitter:*"}}')
    with pytest.raises(AuthConfigError, match="must map to a list"):
        AuthConfig.read(wrong)


def test_authentication_needs_tcp(tmp_path: Path, pki: Pki) -> None:
    tls = ServerTls(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)
    backend = open_backend(f"sqlite://{tmp_path / 'state.db'}")
    with pytest.raises(Exception, match="unix socket"):
        ControlPlane(
            backend,
            ControlPlaneConfig(tls=tls),
            Address("unix", str(tmp_path / "control.sock")),
        )


# -- the command line ------------------------------------------------------------


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(RULES))
    return path


@contextlib.contextmanager
def control_plane_process(tmp_path: Path, *args: str) -> Iterator[str]:
    started = spawn_control_plane(f"sqlite://{tmp_path / 'state.db'}", tmp_path, *args)
    try:
        yield started.address
    finally:
        assert started.terminate() == 0, started.logs()


async def test_the_command_serves_mutual_tls(
    tmp_path: Path, pki: Pki, rules_file: Path
) -> None:
    with control_plane_process(
        tmp_path,
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        "--tls-client-ca",
        str(pki.ca.cert),
        "--auth-config",
        str(rules_file),
    ) as address:
        plane = Plane(address, open_backend(f"sqlite://{tmp_path / 'state.db'}"), pki)
        try:
            async with plane.channel("rita") as channel:
                assert (await whoami(channel)).username == "rita"
        finally:
            await plane.backend.close()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--auth-config", "{rules}"], "needs client certificates"),
        (["--tls-client-ca", "{ca}"], "client certificates need TLS"),
        (["--tls-cert", "{ca}"], "go together"),
    ],
)
def test_the_command_refuses_incomplete_options(
    tmp_path: Path, pki: Pki, rules_file: Path, args: list[str], complaint: str
) -> None:
    given = [a.format(rules=rules_file, ca=pki.ca.cert) for a in args]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "control-plane",
            "--backend",
            f"sqlite://{tmp_path / 'state.db'}",
            *given,
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert complaint in done.stderr.decode()


def test_the_commands_for_people_speak_mutual_tls(
    tmp_path: Path, pki: Pki, rules_file: Path
) -> None:
    alice = pki.client("alice")
    tls = {
        "GRIDPOD_TLS_CA": str(pki.ca.cert),
        "GRIDPOD_TLS_CERT": str(alice.cert),
        "GRIDPOD_TLS_KEY": str(alice.key),
    }
    with control_plane_process(
        tmp_path,
        *("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)),
        *("--tls-client-ca", str(pki.ca.cert), "--auth-config", str(rules_file)),
    ) as address:
        submit = ["submit", "--control-plane", address, "--kernel", "echo", "-"]
        done = _agent_command(submit, tls, stdin="payload")
        assert done.returncode == 0, done.stderr
        assert "session" in done.stdout

        refused = _agent_command(submit, {"GRIDPOD_TLS_CA": str(pki.ca.cert)})
        assert refused.returncode != 0


def _agent_command(
    args: list[str], env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
