"""ArmoniK's published descriptors, read as data from the ``armonik`` wheels on PyPI.

The wheels are fetched with ``pip download`` into a cache folder and opened as zip
archives: their modules are never imported, so they cannot shadow or clash with ours.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

# The protos of 3.2.1 are the reference for every file but the events ones, which
# first appeared in 3.3.0.
REFERENCE_RELEASES = {"3.2.1": "everything but events_*", "3.3.0": "events_*"}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gridpod-tests" / "armonik-wheels"


def fetch_wheel(version: str) -> Path:
    """Return the path of the ``armonik`` wheel of ``version``, downloading it once."""
    folder = _cache_dir() / version
    wheels = sorted(folder.glob(f"armonik-{version}-*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        f"armonik=={version}",
    ]
    subprocess.run(command, check=True, timeout=300)
    wheels = sorted(folder.glob(f"armonik-{version}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no wheel of armonik=={version}")
    return wheels[0]


def _serialized_files(source: str) -> Iterator[bytes]:
    """Yield the bytes handed to ``AddSerializedFile`` in a generated module."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            yield node.args[0].value


def wheel_descriptors(wheel: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Map each ``.proto`` file name in the wheel to its descriptor."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.endswith("_pb2.py"):
                continue
            for blob in _serialized_files(archive.read(name).decode()):
                proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
                files[proto.name] = proto
    return files


def reference_descriptors() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The reference descriptor of every file of the API, as documented above."""
    base = wheel_descriptors(fetch_wheel("3.2.1"))
    events = wheel_descriptors(fetch_wheel("3.3.0"))
    files = {name: proto for name, proto in base.items()}
    files.update({n: p for n, p in events.items() if n.startswith("events_")})
    return files
