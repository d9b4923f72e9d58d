"""The images, manifests and compose file name what the code really accepts.

No container engine runs here: each container's command is read from its
Dockerfile and manifest as an engine would, then parsed by the project's own
click commands under the container's environment, so a renamed option or
variable fails these tests. The last test runs a pod from those commands.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import click
import pytest
import yaml

from agent import cli as agent_cli
from agent._http import HealthServer
from agent.backend import open_backend
from agent.control import ControlPlane, ControlPlaneConfig
from deploy import probe
from deploy.simulate_pod import (
    APP_DIR,
    ROOT,
    Image,
    compose_services,
    container_command,
    container_environment,
    container_ports,
    dockerfile_for,
    kubernetes_object,
    kubernetes_objects,
    read_image,
)
from worker_sdk import Address
from worker_sdk._cli import load_handler
from worker_sdk._cli import main as worker_command

AGENT = read_image(ROOT / "Dockerfile.agent")
WORKER = read_image(ROOT / "Dockerfile.worker")
IMAGES = (AGENT, WORKER)
PROBE_SCRIPT = f"{APP_DIR}/deploy/probe.py"
# Every variable of ours that a deployment may set: a command must read it.
_OUR_VARIABLES = re.compile(r"^(ComputePlane__|GRIDPOD_)")
_REDIS_URL = re.compile(
    r"^redis://(?::(?P<password>[^@]*)@)?(?P<host>[^:/]+):(?P<port>\d+)/(?P<db>\d+)$"
)


# -- reading a container's command as the code does ------------------------------------


@dataclass(frozen=True)
class Invocation:
    """A command line, as the project's click command parsed it."""

    command: click.Command
    params: dict[str, Any]

    def address(self, option: str, socket_type: str) -> Address:
        return Address.parse(self.params[option], self.params[socket_type])

    def reads(self) -> set[str]:
        """The environment variables its options read."""
        return {
            str(p.envvar)
            for p in self.command.params
            if isinstance(p, click.Option) and p.envvar
        }


def _console_script(name: str) -> click.Command:
    scripts = {
        entry.name: entry
        for entry in metadata.distribution("gridpod").entry_points
        if entry.group == "console_scripts"
    }
    assert name in scripts, f"{name} is not a console script of the project"
    command = scripts[name].load()
    assert isinstance(command, click.Command)
    return command


def _click_command(argv: Sequence[str]) -> tuple[click.Command, list[str]]:
    """The click command that ``argv`` runs, and the arguments it gets."""
    if list(argv[:3]) == ["python", "-m", "worker_sdk"]:
        assert importlib.util.find_spec("worker_sdk.__main__") is not None
        return worker_command, list(argv[3:])
    command = _console_script(argv[0])
    if isinstance(command, click.Group):
        assert len(argv) > 1, f"{argv[0]} needs a subcommand"
        assert argv[1] in command.commands, f"no command {' '.join(argv[:2])}"
        return command.commands[argv[1]], list(argv[2:])
    return command, list(argv[1:])


def invoke(argv: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """Parse ``argv`` as its command would under ``env``, running nothing."""
    command, arguments = _click_command(argv)
    host = {k: v for k, v in os.environ.items() if not _OUR_VARIABLES.match(k)}
    with mock.patch.dict(os.environ, {**host, **env}, clear=True):
        context = command.make_context(" ".join(argv[:2]), arguments)
    return Invocation(command, dict(context.params))


def _kubernetes_container(deployment: str, name: str) -> dict[str, Any]:
    spec = kubernetes_object("Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def _pod_spec(deployment: str) -> dict[str, Any]:
    pod: dict[str, Any] = kubernetes_object("Deployment", deployment)["spec"][
        "template"
    ]["spec"]
    return pod


def kubernetes_invocation(deployment: str, name: str) -> Invocation:
    container = _kubernetes_container(deployment, name)
    image = read_image(dockerfile_for(container["image"]))
    argv = container_command(image, container, entrypoint="command", arguments="args")
    env = container_environment(image, container.get("env"))
    invocation = invoke(argv, env)
    set_here = {e["name"] for e in container.get("env", [])}
    assert set_here <= invocation.reads(), f"{deployment}/{name} sets unread variables"
    return invocation


def _compose_image(service: Mapping[str, Any]) -> Image:
    build = service["build"]
    assert (ROOT / "deploy" / build["context"]).resolve() == ROOT
    return read_image(ROOT / build["dockerfile"])


def compose_invocation(name: str) -> Invocation:
    service = compose_services()[name]
    image = _compose_image(service)
    argv = container_command(
        image, service, entrypoint="entrypoint", arguments="command"
    )
    invocation = invoke(argv, container_environment(image, service.get("environment")))
    set_here = set(service.get("environment", {}))
    assert set_here <= invocation.reads(), f"compose {name} sets unread variables"
    return invocation


def image_invocation(image: Image) -> Invocation:
    """The image's own command; the backend is the deployment's to give."""
    env = {"GRIDPOD_BACKEND": "redis://redis:6379/0", **image.env}
    return invoke([*image.entrypoint, *image.cmd], env)


def _under(path: str, folder: str) -> bool:
    return PurePosixPath(folder) in PurePosixPath(path).parents


def _probe_arguments(command: Sequence[str]) -> list[str]:
    """The arguments of a ``python /opt/gridpod/deploy/probe.py ...`` command,
    checked against the script's own parser."""
    assert list(command[:2]) == ["python", PROBE_SCRIPT], command
    probe._parser().parse_args(list(command[2:]))
    return list(command[2:])


# -- the images ------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.dockerfile.name)
def test_image_builds_wheels_apart_and_installs_only_them(image: Image) -> None:
    builder, final = image.stages[0], image.stages[-1]
    assert len(image.stages) == 2
    assert builder.name == "builder"
    assert {stage.base for stage in image.stages} == {"python:3.11-slim"}
    assert any("pip wheel" in run for run in builder.each("RUN"))
    installs = [run for run in final.each("RUN") if "pip install" in run]
    assert len(installs) == 1
    assert "from=builder" in installs[0]
    assert "--no-index" in installs[0]
    final_steps = " ".join(final.each("RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip wheel"):
        assert tool not in final_steps


def test_images_run_as_one_unprivileged_user() -> None:
    users = {image.user for image in IMAGES}
    assert len(users) == 1, "the pod's sockets are owner-only: one user for both"
    (user,) = users
    uid, gid = (int(part) for part in user.split(":"))
    assert uid > 0
    assert gid > 0
    for deployment in ("compute", "control-plane"):
        security = _pod_spec(deployment)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)


def test_images_share_the_cache_volume_and_socket_variables() -> None:
    channel_variables = {
        name: value for name, value in AGENT.env.items() if "ComputePlane__" in name
    }
    assert {n: WORKER.env[n] for n in channel_variables} == channel_variables
    for image in IMAGES:
        assert image.volumes == ("/cache",)
    for image, option in ((AGENT, "worker"), (WORKER, "address")):
        invocation = image_invocation(image)
        assert set(channel_variables) <= invocation.reads()
        assert _under(invocation.params[option].removeprefix("unix://"), "/cache")


def test_entry_points_are_the_project_commands() -> None:
    assert AGENT.entrypoint == ("agent",)
    assert image_invocation(AGENT).command is agent_cli.run
    assert WORKER.entrypoint == ("python", "-m", "worker_sdk")
    assert image_invocation(WORKER).command is worker_command


def test_worker_image_runs_an_importable_handler() -> None:
    invocation = image_invocation(WORKER)
    handler = invocation.params["handler"]
    load_handler(handler)
    package = handler.partition(".")[0]
    assert (f"{package}/", f"{APP_DIR}/{package}/") in WORKER.copies
    assert APP_DIR in WORKER.env["PYTHONPATH"].split(":")


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.dockerfile.name)
def test_image_copies_repository_files_to_the_same_paths(image: Image) -> None:
    assert image.copies
    for source, destination in image.copies:
        assert (ROOT / source).exists(), source
        expected = f"{APP_DIR}/{source}"
        assert destination.rstrip("/") == expected.rstrip("/")


def test_agent_healthcheck_asks_the_health_port() -> None:
    invocation = image_invocation(AGENT)
    check, url = _probe_arguments(AGENT.healthcheck)
    assert check == "http"
    assert url == f"http://127.0.0.1:{invocation.params['health_port']}/readyz"
    assert (PROBE_SCRIPT.removeprefix(f"{APP_DIR}/"), PROBE_SCRIPT) in AGENT.copies


def test_worker_healthcheck_asks_the_worker() -> None:
    assert _probe_arguments(WORKER.healthcheck) == ["worker"]
    assert (PROBE_SCRIPT.removeprefix(f"{APP_DIR}/"), PROBE_SCRIPT) in WORKER.copies


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(
                prefix, pattern.removeprefix("**/")
            ):
                return True
    return False


def test_dockerignore_keeps_what_the_images_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    copied = {source for image in IMAGES for source, _ in image.copies}
    for image in IMAGES:
        for arguments in image.stages[0].each("COPY"):
            copied.update(arguments.split()[:-1])
    for source in copied:
        assert not _ignored(source.rstrip("/"), patterns), source
    for left_out in (".venv", ".git", "tests", "agent/__pycache__"):
        assert _ignored(left_out, patterns), left_out


# -- Kubernetes ------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    folder = ROOT / "deploy" / "kubernetes"
    listed = set(
        yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    )
    present = {p.name for p in folder.glob("*.yaml")}
    assert listed == present - {"kustomization.yaml"}
    kinds = {(o["kind"], o["metadata"]["name"]) for o in kubernetes_objects()}
    assert kinds == {
        ("Deployment", "compute"),
        ("Deployment", "control-plane"),
        ("Service", "control-plane"),
        ("Deployment", "redis"),
        ("Service", "redis"),
    }


def test_compute_pod_sockets_meet_in_the_shared_volume() -> None:
    agent = kubernetes_invocation("compute", "agent")
    worker = kubernetes_invocation("compute", "worker")
    worker_socket = agent.address("worker", "worker_socket_type")
    agent_socket = agent.address("listen", "agent_socket_type")
    assert worker.address("address", "worker_socket_type") == worker_socket
    assert worker.address("agent", "agent_socket_type") == agent_socket
    volumes = {v["name"] for v in _pod_spec("compute")["volumes"] if "emptyDir" in v}
    for name in ("agent", "worker"):
        mounts = _kubernetes_container("compute", name)["volumeMounts"]
        shared = [m["mountPath"] for m in mounts if m["name"] in volumes]
        for address in (worker_socket, agent_socket):
            assert address.kind == "unix"
            assert any(_under(address.target, path) for path in shared), name


def test_compute_pod_probes_ask_the_agent_health_port() -> None:
    agent = kubernetes_invocation("compute", "agent")
    container = _kubernetes_container("compute", "agent")
    ports = container_ports(_pod_spec("compute"))
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert ports[str(readiness["port"])] == agent.params["health_port"]
    assert ports[str(liveness["port"])] == agent.params["health_port"]
    assert (readiness["path"], liveness["path"]) == ("/readyz", "/livez")
    server = HealthServer("127.0.0.1", 0, lambda: False)
    assert server._answer("GET", readiness["path"])[0] == 503
    assert server._answer("GET", liveness["path"])[0] == 200


def test_pod_outlasts_the_agent_drain_and_the_worker_outlasts_its_agent() -> None:
    agent = kubernetes_invocation("compute", "agent")
    worker = _kubernetes_container("compute", "worker")
    hook = _probe_arguments(worker["lifecycle"]["preStop"]["exec"]["command"])
    assert hook[0] == "agent-stopped"
    termination = _pod_spec("compute")["terminationGracePeriodSeconds"]
    assert agent.params["grace_period"] < float(hook[1]) < termination
    assert "lifecycle" not in _kubernetes_container("compute", "agent")


def test_worker_liveness_is_the_worker_image_healthcheck() -> None:
    worker = _kubernetes_container("compute", "worker")
    assert tuple(worker["livenessProbe"]["exec"]["command"]) == WORKER.healthcheck
    load_handler(kubernetes_invocation("compute", "worker").params["handler"])


@pytest.mark.parametrize("deployment", ["compute", "control-plane", "redis"])
def test_every_container_requests_resources(deployment: str) -> None:
    for container in _pod_spec(deployment)["containers"]:
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), container["name"]


def test_control_plane_serves_its_service_port() -> None:
    control = kubernetes_invocation("control-plane", "control-plane")
    listen = Address.parse(control.params["listen"])
    port = int(listen.target.rpartition(":")[2])
    container = _kubernetes_container("control-plane", "control-plane")
    ports = container_ports(_pod_spec("control-plane"))
    service = kubernetes_object("Service", "control-plane")["spec"]["ports"][0]
    assert ports[str(service["targetPort"])] == port
    assert container["readinessProbe"]["grpc"]["port"] == port
    assert container["livenessProbe"]["grpc"]["port"] == port


def _redis_service_port(url: str) -> int:
    found = _REDIS_URL.match(url)
    assert found, f"{url} is not redis://[:password@]host:port/db"
    service = kubernetes_object("Service", found["host"])
    (port,) = service["spec"]["ports"]
    assert int(found["port"]) == port["port"]
    return int(port["port"])


def test_agents_and_control_plane_share_the_redis_backend() -> None:
    agent = kubernetes_invocation("compute", "agent")
    control = kubernetes_invocation("control-plane", "control-plane")
    assert agent.params["backend_url"] == control.params["backend_url"]
    _redis_service_port(agent.params["backend_url"])
    redis = _kubernetes_container("redis", "redis")
    assert container_ports(_pod_spec("redis"))["redis"] == 6379
    assert redis["image"].startswith("redis:")


def test_manifests_use_images_of_this_version() -> None:
    version = metadata.version("gridpod")
    images = [
        c["image"]
        for deployment in ("compute", "control-plane")
        for c in _pod_spec(deployment)["containers"]
    ]
    images += [s["image"] for s in compose_services().values() if "build" in s]
    for image in images:
        assert image.endswith(f":{version}"), image
        assert dockerfile_for(image).exists(), image


# -- compose ---------------------------------------------------------------------------


def _compose_pods() -> Iterator[tuple[str, str]]:
    services = compose_services()
    for name in sorted(services):
        if name.startswith("agent-"):
            yield name, "worker-" + name.removeprefix("agent-")


def _cache_volume(service: str) -> str:
    mounts = [str(v).split(":") for v in compose_services()[service]["volumes"]]
    (volume,) = [source for source, target, *_ in mounts if target == "/cache"]
    return volume


def test_compose_pairs_each_agent_with_its_own_worker() -> None:
    pods = list(_compose_pods())
    assert len(pods) >= 2
    volumes = [_cache_volume(agent) for agent, _ in pods]
    assert len(set(volumes)) == len(pods), "each pod has a /cache of its own"
    for agent_name, worker_name in pods:
        assert _cache_volume(worker_name) == _cache_volume(agent_name)
        agent = compose_invocation(agent_name)
        worker = compose_invocation(worker_name)
        assert worker.address("address", "worker_socket_type") == agent.address(
            "worker", "worker_socket_type"
        )
        assert worker.address("agent", "agent_socket_type") == agent.address(
            "listen", "agent_socket_type"
        )
        assert _under(agent.params["worker"].removeprefix("unix://"), "/cache")
        # Stopped in reverse order of depends_on: the agent drains first.
        assert worker_name in compose_services()[agent_name]["depends_on"]
        load_handler(worker.params["handler"])


def _seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+)s", duration)
    assert found, duration
    return float(found[1])


def test_compose_health_checks_and_stop_grace() -> None:
    _, url = _probe_arguments(AGENT.healthcheck)
    for agent_name, worker_name in _compose_pods():
        agent = compose_invocation(agent_name)
        service = compose_services()[agent_name]
        assert "healthcheck" not in service, "the image's check asks the port below"
        assert url == f"http://127.0.0.1:{agent.params['health_port']}/readyz"
        for name in (agent_name, worker_name):
            stop = _seconds(compose_services()[name]["stop_grace_period"])
            assert stop > agent.params["grace_period"], name


def test_compose_control_plane_and_backend() -> None:
    control = compose_invocation("control-plane")
    service = compose_services()["control-plane"]
    port = control.params["listen"].rpartition(":")[2]
    (published,) = service["ports"]
    assert str(published).rpartition(":")[2] == port
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert _probe_arguments(test[1:]) == ["grpc", f"127.0.0.1:{port}"]
    backends = {
        compose_invocation(agent).params["backend_url"] for agent, _ in _compose_pods()
    }
    assert backends == {control.params["backend_url"]}
    found = _REDIS_URL.match(control.params["backend_url"])
    assert found
    assert found["host"] in compose_services()
    assert found["port"] == "6379"


def test_a_renamed_option_fails_the_checks() -> None:
    with pytest.raises(click.NoSuchOption):
        invoke(["agent", "run", "--health-prot", "9090"], {"GRIDPOD_BACKEND": "x"})
    with pytest.raises(click.MissingParameter):
        invoke(["agent", "run"], {"GRIDPOD_BAKEND": "x"})


# -- the probe script, against real servers --------------------------------------------


async def test_probe_http_follows_the_agent_readiness() -> None:
    ready = False
    server = HealthServer("127.0.0.1", 0, lambda: ready)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/readyz"
    try:
        with pytest.raises(probe.ProbeFailed, match="503"):
            await asyncio.to_thread(probe.check_http, url, 2.0)
        ready = True
        assert "200" in await asyncio.to_thread(probe.check_http, url, 2.0)
    finally:
        await server.stop()


async def test_probe_grpc_asks_the_control_plane(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite://{tmp_path}/state.db")
    plane = ControlPlane(backend, ControlPlaneConfig(), Address.parse("127.0.0.1:0"))
    await plane.start()
    try:
        address = f"127.0.0.1:{plane.port}"
        assert "SERVING" in await asyncio.to_thread(probe.check_grpc, address, 2.0)
    finally:
        await plane.stop(0.1)
        await backend.close()
    with pytest.raises(probe.ProbeFailed, match="UNAVAILABLE"):
        await asyncio.to_thread(probe.check_grpc, address, 0.5)


def test_probe_waits_for_a_live_agent_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.sock"
    monkeypatch.setenv("ComputePlane__AgentChannel__Address", str(path))
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen()
        with pytest.raises(probe.ProbeFailed, match="still runs"):
            probe.wait_agent_stopped(0.3)
    assert "stopped" in probe.wait_agent_stopped(0.3)


# -- the pod, run ----------------------------------------------------------------------


def test_simulated_pod_computes_and_stops_as_kubernetes_stops_it() -> None:
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(
        [str(ROOT / "scripts" / "simulate-pod"), "--tasks", "6", "--timeout", "60"],
        env={**os.environ, "GRIDPOD_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pi ~ 3.1" in done.stdout
    assert re.search(r"agent exited 0 .*worker exited 0 .*pre-stop hook", done.stdout)
    assert "simulate-pod: ok" in done.stdout
