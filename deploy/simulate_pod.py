"""Run a compute pod of deploy/kubernetes as local processes, with a control plane,
and put a few tasks through it: ``scripts/simulate-pod [--tasks N] [--points M]``.

Each container runs what its image would: the Dockerfile's ENTRYPOINT and CMD,
replaced by the container's command and args, with the image's ENV and the
container's env. A temporary folder stands in for each emptyDir volume, the files
an image copies to /opt/gridpod are read from the repository, Redis runs with its
manifest's arguments (a SQLite file stands in where redis-server is not
installed), and each container port gets a free local one. The pods are
ready when their probes pass, and they stop as Kubernetes stops a pod: each
container gets SIGTERM once its pre-stop hook, if any, has returned, and must exit
0 within terminationGracePeriodSeconds.

The readers of Dockerfiles and manifests here are also what tests/test_deploy.py
checks the deployment files with.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent._ports import free_port
from samples.pi.__main__ import estimate

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"
# Where the images keep the files they copy from the repository, at the same
# relative paths: the simulation reads them in place.
APP_DIR = "/opt/gridpod"
# Variables of the host that would leak into a container's settings.
_CONTAINER_VARIABLES = re.compile(r"^(ComputePlane__|GRIDPOD_|PYTHONPATH$)")
_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9.\-]+):(?P<port>\d+)(?=/|$)")
_READY_POLL = 0.1
_KILL_WAIT = 5.0


class SimulationError(Exception):
    """The pod did not behave as its manifests say it would."""


# -- Dockerfiles -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    arguments: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def each(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction, in order."""
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.each(keyword)
        return found[-1] if found else None


@dataclass(frozen=True)
class Image:
    """What a container of an image runs, from the final stage of its Dockerfile."""

    dockerfile: Path
    stages: tuple[Stage, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: Mapping[str, str]
    healthcheck: tuple[str, ...]
    user: str
    volumes: tuple[str, ...]
    # (source in the build context, destination) of COPY from the context.
    copies: tuple[tuple[str, str], ...]


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending.strip()


def read_stages(path: Path) -> tuple[Stage, ...]:
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, ()))
        elif stages:
            last = stages[-1]
            stages[-1] = Stage(last.base, last.name, (*last.instructions, instruction))
    if not stages:
        raise SimulationError(f"{path.name} has no FROM")
    return tuple(stages)


def exec_form(arguments: str, where: str) -> tuple[str, ...]:
    """A JSON array of strings: the form whose process gets the container's
    signals, where the shell form would run it under /bin/sh."""
    try:
        words = json.loads(arguments)
    except json.JSONDecodeError:
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise SimulationError(f"{where}: {arguments!r} is not in exec form")
    return tuple(words)


def _environment(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in stage.each("ENV"):
        for pair in shlex.split(arguments):
            name, separator, value = pair.partition("=")
            if not separator:
                raise SimulationError(f"ENV {arguments!r}: write NAME=VALUE")
            env[name] = value
    return env


def _healthcheck(stage: Stage, where: str) -> tuple[str, ...]:
    arguments = stage.last("HEALTHCHECK")
    if arguments is None or arguments.upper() == "NONE":
        return ()
    _, found, command = arguments.partition("CMD ")
    if not found:
        raise SimulationError(f"{where}: HEALTHCHECK {arguments!r} has no CMD")
    return exec_form(command, f"{where} HEALTHCHECK")


def _copies(stage: Stage) -> tuple[tuple[str, str], ...]:
    copies: list[tuple[str, str]] = []
    for arguments in stage.each("COPY"):
        words = shlex.split(arguments)
        if any(w.startswith("--from") for w in words):
            continue
        *sources, destination = [w for w in words if not w.startswith("--")]
        copies += [(source, destination) for source in sources]
    return tuple(copies)


def _volumes(stage: Stage) -> tuple[str, ...]:
    volumes: list[str] = []
    for arguments in stage.each("VOLUME"):
        if arguments.startswith("["):
            volumes += exec_form(arguments, "VOLUME")
        else:
            volumes += arguments.split()
    return tuple(volumes)


def read_image(path: Path) -> Image:
    stages = read_stages(path)
    final = stages[-1]
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    if entrypoint is None:
        raise SimulationError(f"{path.name}: the final stage has no ENTRYPOINT")
    return Image(
        dockerfile=path,
        stages=stages,
        entrypoint=exec_form(entrypoint, f"{path.name} ENTRYPOINT"),
        cmd=exec_form(cmd, f"{path.name} CMD") if cmd is not None else (),
        env=_environment(final),
        healthcheck=_healthcheck(final, path.name),
        user=final.last("USER") or "root",
        volumes=_volumes(final),
        copies=_copies(final),
    )


def dockerfile_for(image: str) -> Path:
    """``gridpod-agent:TAG`` is built from Dockerfile.agent, and so on."""
    repository = image.rpartition("/")[2].partition(":")[0]
    if not repository.startswith("gridpod-"):
        raise SimulationError(f"{image}: not an image of this repository")
    return ROOT / f"Dockerfile.{repository.removeprefix('gridpod-')}"


# -- manifests -------------------------------------------------------------------------


def kubernetes_objects() -> list[dict[str, Any]]:
    """Every object of the manifests that kustomization.yaml lists, in order."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        text = (KUBERNETES / resource).read_text()
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def kubernetes_object(kind: str, name: str) -> dict[str, Any]:
    for found in kubernetes_objects():
        if found["kind"] == kind and found["metadata"]["name"] == name:
            return found
    raise SimulationError(f"no {kind} {name!r} in {KUBERNETES.relative_to(ROOT)}")


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())[
        "services"
    ]
    return services


def _words(value: Any) -> list[str]:
    """A command given as a list, or as one string that a shell would split."""
    if isinstance(value, str):
        return shlex.split(value)
    return [str(word) for word in value]


def container_command(
    image: Image, container: Mapping[str, Any], *, entrypoint: str, arguments: str
) -> list[str]:
    """What a container runs. Kubernetes names the overrides ``command`` and
    ``args``, compose ``entrypoint`` and ``command``; in both, a new entry point
    drops the image's CMD."""
    if entrypoint in container:
        return [*_words(container[entrypoint]), *_words(container.get(arguments, []))]
    return [*image.entrypoint, *_words(container.get(arguments, image.cmd))]


def container_environment(image: Image, env: Any) -> dict[str, str]:
    """The image's ENV under a container's: a Kubernetes list of name and value,
    or compose's mapping or list of NAME=VALUE."""
    merged = dict(image.env)
    if isinstance(env, Mapping):
        merged.update({str(name): str(value) for name, value in env.items()})
        return merged
    for item in env or []:
        if isinstance(item, Mapping):
            if "value" not in item:
                raise SimulationError(f"env {item['name']}: only plain values")
            merged[str(item["name"])] = str(item["value"])
        else:
            name, _, value = str(item).partition("=")
            merged[name] = value
    return merged


def container_ports(spec: Mapping[str, Any]) -> dict[str, int]:
    """The ports the containers of a pod declare, by name and by number."""
    ports: dict[str, int] = {}
    for container in spec["containers"]:
        for port in container.get("ports", []):
            number = int(port["containerPort"])
            ports[str(number)] = number
            if "name" in port:
                ports[str(port["name"])] = number
    return ports


# -- on this machine -------------------------------------------------------------------


def _after_prefix(path: str, found: re.Match[str]) -> str:
    return found.group(1) + path


@dataclass
class Localizer:
    """Puts a container's command on this machine: its programs, the paths of
    its image and volumes, and the ports of its pod."""

    paths: dict[str, Path]
    ports: dict[int, int]
    backend_url: str

    def program(self, name: str) -> list[str]:
        if name == "python":
            return [sys.executable]
        script = Path(sys.executable).parent / name
        if name == "agent" and script.exists():
            return [str(script)]
        raise SimulationError(f"{name}: not a program the images provide")

    def argv(self, command: Sequence[str]) -> list[str]:
        program, *rest = command
        local = self.program(program)
        previous = program
        for word in rest:
            local.append(self._word(word, previous))
            previous = word
        return local

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        host = {
            k: v for k, v in os.environ.items() if not _CONTAINER_VARIABLES.match(k)
        }
        local = {name: self._word(value, "") for name, value in env.items()}
        if "GRIDPOD_BACKEND" in local:
            local["GRIDPOD_BACKEND"] = self.backend_url
        return {**host, **local}

    def _word(self, word: str, previous: str) -> str:
        if previous.endswith("-port") and word.isdigit():
            return str(self.ports.get(int(word), int(word)))
        for image_path, local in self.paths.items():
            pattern = rf"(^|//|=|:){re.escape(image_path)}(?=/|$)"
            word = re.sub(pattern, functools.partial(_after_prefix, str(local)), word)
        return _HOST_PORT.sub(self._local_port, word)

    def _local_port(self, found: re.Match[str]) -> str:
        port = int(found.group("port"))
        if port not in self.ports:
            return found.group(0)
        return f"127.0.0.1:{self.ports[port]}"


class Process:
    """One container's process, or a hook, logging to a file of its own."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        # Through agent local's guard: killed outright, the simulation leaves
        # no process behind.
        guard = [sys.executable, "-m", "agent._guard", str(os.getpid()), "--"]
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                [*guard, *argv],
                env=env,
                cwd=log.parent,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ended: float | None = None

    @property
    def code(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def signal(self, signum: int) -> None:
        if self.code is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(_KILL_WAIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {self.name}| {line}" for line in text)


# -- the kubelet's part ----------------------------------------------------------------


@dataclass
class Container:
    """A container of a simulated pod, with its image and local settings."""

    spec: dict[str, Any]
    image: Image
    command: list[str]
    env: dict[str, str]
    localizer: Localizer
    process: Process | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def run(self, command: Sequence[str], timeout: float) -> bool:
        """Whether ``command`` (an exec probe) exits 0 in the container."""
        try:
            done = subprocess.run(
                self.localizer.argv(command),
                env=self.localizer.environment(self.env),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return bool(done.returncode == 0)


def _http_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status: int = answer.status
    except (urllib.error.URLError, OSError):
        return False
    # urlopen raises for 400 and above, as Kubernetes fails them.
    return 200 <= status < 400


def _grpc_serving(port: int, timeout: float) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _tcp_open(port: int, timeout: float) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@dataclass
class Check:
    label: str
    passes: Callable[[], bool]


class Pod:
    """The pod of a Deployment, its containers run as local processes."""

    def __init__(self, deployment: Mapping[str, Any], folder: Path, backend: str):
        self.name = str(deployment["metadata"]["name"])
        self.spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
        self.folder = folder / self.name
        self.folder.mkdir(mode=0o700)
        named = container_ports(self.spec)
        self.ports = {number: free_port() for number in set(named.values())}
        self._named = named
        volumes = self._volumes()
        self.containers = [
            self._container(spec, volumes, backend) for spec in self.spec["containers"]
        ]

    def _volumes(self) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for volume in self.spec.get("volumes", []):
            if "emptyDir" not in volume:
                raise SimulationError(f"{self.name}: only emptyDir volumes")
            volumes[volume["name"]] = self.folder / volume["name"]
            volumes[volume["name"]].mkdir(mode=0o700)
        return volumes

    def _container(
        self, spec: dict[str, Any], volumes: dict[str, Path], backend: str
    ) -> Container:
        image = read_image(dockerfile_for(spec["image"]))
        mounts = {
            m["mountPath"]: volumes[m["name"]] for m in spec.get("volumeMounts", [])
        }
        localizer = Localizer({APP_DIR: ROOT, **mounts}, self.ports, backend)
        command = container_command(image, spec, entrypoint="command", arguments="args")
        if "--backend" in command:
            raise SimulationError(
                f"{self.name}/{spec['name']}: give the backend in GRIDPOD_BACKEND, "
                "which the simulation points at its own state file"
            )
        env = container_environment(image, spec.get("env"))
        return Container(spec, image, command, env, localizer)

    def start(self) -> None:
        for container in self.containers:
            argv = container.localizer.argv(container.command)
            env = container.localizer.environment(container.env)
            log = self.folder / f"{container.name}.log"
            container.process = Process(f"{self.name}/{container.name}", argv, env, log)
            print(f"  {self.name}/{container.name}: {shlex.join(container.command)}")

    def local_port(self, port: int | str) -> int:
        return self.ports[self._named[str(port)]]

    def checks(self) -> list[Check]:
        """Every probe of the manifest. Kubernetes ignores the images'
        HEALTHCHECKs: tests/test_deploy.py checks those."""
        return [
            self._probe(container, kind)
            for container in self.containers
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
            if kind in container.spec
        ]

    def _probe(self, container: Container, kind: str) -> Check:
        probe: dict[str, Any] = container.spec[kind]
        timeout = float(probe.get("timeoutSeconds", 1))
        label = f"{self.name}/{container.name} {kind}"
        if "httpGet" in probe:
            port = self.local_port(probe["httpGet"]["port"])
            url = f"http://127.0.0.1:{port}{probe['httpGet'].get('path', '/')}"
            return Check(label, lambda: _http_ok(url, timeout))
        if "grpc" in probe:
            port = self.local_port(probe["grpc"]["port"])
            return Check(label, lambda: _grpc_serving(port, timeout))
        if "tcpSocket" in probe:
            port = self.local_port(probe["tcpSocket"]["port"])
            return Check(label, lambda: _tcp_open(port, timeout))
        run = functools.partial(container.run, probe["exec"]["command"], 5.0)
        return Check(label, run)

    def exited(self) -> list[Process]:
        return [
            c.process
            for c in self.containers
            if c.process is not None and c.process.code is not None
        ]

    def terminate(self) -> list[str]:
        """Stop the pod as Kubernetes does; how each container ended."""
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        began = time.monotonic()
        hooks = {c.name: hook for c in self.containers if (hook := self._hook(c))}
        waiting = list(self.containers)
        while waiting and time.monotonic() < began + grace:
            for container in list(waiting):
                hook = hooks.get(container.name)
                if hook is None or hook.code is not None:
                    assert container.process is not None
                    container.process.signal(signal.SIGTERM)
                    waiting.remove(container)
            time.sleep(0.05)
        while time.monotonic() < began + grace and not self._all_exited():
            time.sleep(0.05)
        return [self._ending(c, hooks.get(c.name), began) for c in self.containers]

    def _hook(self, container: Container) -> Process | None:
        """Start the container's pre-stop hook, if it has one."""
        hook = container.spec.get("lifecycle", {}).get("preStop", {})
        if "exec" not in hook:
            return None
        argv = container.localizer.argv(hook["exec"]["command"])
        env = container.localizer.environment(container.env)
        log = self.folder / f"{container.name}-pre-stop.log"
        return Process(f"{self.name}/{container.name} pre-stop", argv, env, log)

    def _all_exited(self) -> bool:
        return len(self.exited()) == len(self.containers)

    def _ending(self, container: Container, hook: Process | None, began: float) -> str:
        process = container.process
        assert process is not None
        code = process.code
        if code is None:
            process.popen.kill()
            raise SimulationError(
                f"{process.name} still ran after terminationGracePeriodSeconds: "
                f"killed\n{process.tail()}"
            )
        if code != 0:
            raise SimulationError(f"{process.name} exited {code}\n{process.tail()}")
        assert process.ended is not None
        ending = f"{container.name} exited 0 after {process.ended - began:.1f}s"
        if hook is not None:
            if hook.code != 0:
                raise SimulationError(f"{hook.name} exited {hook.code}\n{hook.tail()}")
            assert hook.ended is not None
            ending += f" (pre-stop hook done after {hook.ended - began:.1f}s)"
        return ending

    def kill(self) -> None:
        for container in self.containers:
            if container.process is not None:
                container.process.kill()


def wait_ready(pods: Sequence[Pod], timeout: float) -> list[str]:
    """Poll every check until each has passed once; the labels, in order."""
    pending = [check for pod in pods for check in pod.checks()]
    passed: list[str] = []
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=4) as pool:
        while pending:
            for pod in pods:
                for process in pod.exited():
                    raise SimulationError(
                        f"{process.name} exited {process.code} before the pod was "
                        f"ready\n{process.tail()}"
                    )
            results = list(pool.map(lambda check: check.passes(), pending))
            passed += [c.label for c, ok in zip(pending, results, strict=True) if ok]
            pending = [c for c, ok in zip(pending, results, strict=True) if not ok]
            if pending and time.monotonic() > deadline:
                labels = ", ".join(check.label for check in pending)
                raise SimulationError(f"not passing after {timeout:g}s: {labels}")
            if pending:
                time.sleep(_READY_POLL)
    return passed


# -- the simulation --------------------------------------------------------------------


@dataclass
class Simulation:
    tasks: int
    points: int
    folder: Path
    pods: list[Pod] = field(default_factory=list)

    def run(self) -> None:
        with self._backend() as backend:
            self._run(backend)

    @contextlib.contextmanager
    def _backend(self) -> Iterator[str]:
        """Redis as its manifest runs it, on a free port, where redis-server is
        installed; a SQLite file otherwise, which one pod can share as well."""
        binary = shutil.which("redis-server")
        if binary is None:
            print("no redis-server here: the pods share a SQLite file instead")
            yield f"sqlite://{self.folder}/state.db"
            return
        container = kubernetes_object("Deployment", "redis")["spec"]["template"][
            "spec"
        ]["containers"][0]
        data = self.folder / "redis-data"
        data.mkdir()
        args = [str(data) if arg == "/data" else str(arg) for arg in container["args"]]
        port = free_port()
        command = [binary, *args, "--port", str(port), "--bind", "127.0.0.1"]
        log = (self.folder / "redis.log").open("wb")
        redis = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(port, redis)
            print(f"redis: {' '.join(command[1:])}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            redis.terminate()
            redis.wait(10)
            log.close()

    def _run(self, backend: str) -> None:
        control = Pod(
            kubernetes_object("Deployment", "control-plane"), self.folder, backend
        )
        compute = Pod(kubernetes_object("Deployment", "compute"), self.folder, backend)
        self.pods = [control, compute]
        print(f"simulating the control plane and one compute pod in {self.folder}:")
        started = time.monotonic()
        for pod in self.pods:
            pod.start()
        passed = wait_ready(self.pods, timeout=60)
        print(f"ready after {time.monotonic() - started:.1f}s: {', '.join(passed)}")
        service = kubernetes_object("Service", "control-plane")
        port = control.local_port(service["spec"]["ports"][0]["targetPort"])
        self._compute(f"127.0.0.1:{port}")
        print(f"{compute.name}: " + "; ".join(compute.terminate()))
        print(f"{control.name}: " + "; ".join(control.terminate()))

    def _compute(self, address: str) -> None:
        began = time.monotonic()
        figures = estimate(address, self.tasks, self.points)
        took = time.monotonic() - began
        expected_points = self.tasks * self.points
        if int(figures["points"]) != expected_points:
            raise SimulationError(f"{figures['points']} points, not {expected_points}")
        if abs(figures["pi"] - math.pi) > 0.05:
            raise SimulationError(f"pi came out as {figures['pi']}")
        print(
            f"pi ~ {figures['pi']:.6f} from {expected_points:,} points in "
            f"{self.tasks} tasks through the pod ({took:.2f}s)"
        )

    def kill(self) -> None:
        for pod in self.pods:
            pod.kill()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SimulationError(f"redis-server exited {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(_READY_POLL)
    raise SimulationError(f"redis-server did not listen on {port} within 10s")


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SimulationError(f"stopped by signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/simulate-pod", description=__doc__)
    parser.add_argument("--tasks", type=int, default=8, help="sampling tasks")
    parser.add_argument("--points", type=int, default=20_000, help="per task")
    parser.add_argument("--timeout", type=int, default=120, help="for everything, s")
    arguments = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGALRM, _stop_on_signal)
    signal.alarm(arguments.timeout)
    with tempfile.TemporaryDirectory(prefix="simulate-pod-") as folder:
        simulation = Simulation(arguments.tasks, arguments.points, Path(folder))
        try:
            simulation.run()
        except SimulationError as error:
            print(f"simulate-pod: {error}", file=sys.stderr)
            return 1
        finally:
            signal.alarm(0)
            simulation.kill()
    print("simulate-pod: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
