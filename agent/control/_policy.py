"""Permissions in ArmoniK's names, and the file that grants them: users' roles,
and roles' permissions.

A permission is ``Service:Method``, the right to call that method, or one of the
``General`` rights that are no method. A role grants permissions by name or by
wildcard: ``Submitter:*`` (every permission of one service) or ``*`` (all).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from agent._errors import AgentError

__all__ = [
    "IMPERSONATE",
    "SEE_ALL_SESSIONS",
    "AuthConfig",
    "AuthConfigError",
    "granted",
    "method_permissions",
    "permissions",
]

# The right to act as another user, which ArmoniK also lists. Nothing here uses it.
IMPERSONATE = "General:Impersonate"
# The right to see, and act on, the sessions of every user, not only one's own.
# Under General, as ArmoniK files the rights that are no method, so that a role
# granted ``Sessions:*`` gets the Sessions methods without other users' sessions.
SEE_ALL_SESSIONS = "General:SeeAllSessions"
_GENERAL = (IMPERSONATE, SEE_ALL_SESSIONS)

_WILDCARD = "*"


class AuthConfigError(AgentError):
    """A permissions file that cannot be read, or grants what does not exist."""


def method_permissions(services: Iterable[ServiceDescriptor]) -> dict[str, str]:
    """The permission each method needs, by its gRPC path
    (``/armonik.api.grpc.v1.submitter.Submitter/CreateSession``)."""
    return {
        f"/{service.full_name}/{method.name}": f"{service.name}:{method.name}"
        for service in services
        for method in service.methods
    }


def permissions(services: Iterable[ServiceDescriptor]) -> list[str]:
    """Every permission in ArmoniK's names: ``Service:Method`` for each method,
    then the General ones."""
    return [*method_permissions(services).values(), *_GENERAL]


def _matches(pattern: str, permission: str) -> bool:
    if pattern == _WILDCARD:
        return True
    service, _, method = pattern.partition(":")
    if method == _WILDCARD:
        return permission.partition(":")[0] == service
    return pattern == permission


def granted(patterns: Iterable[str], known: Sequence[str]) -> list[str]:
    """The permissions of ``known`` that ``patterns`` grant, in the order of
    ``known``; raises ``AuthConfigError`` for a pattern that grants none."""
    patterns = list(patterns)
    for pattern in patterns:
        if not any(_matches(pattern, permission) for permission in known):
            raise AuthConfigError(
                f"{pattern!r} names no permission: use Service:Method (such as "
                f"Submitter:CreateSession), Service:*, * or one of "
                f"{', '.join(_GENERAL)}"
            )
    return [p for p in known if any(_matches(pattern, p) for pattern in patterns)]


@dataclass(frozen=True)
class AuthConfig:
    """Each user's roles, and each role's permissions (names or wildcards).

    Users are named as their client certificates name them (subject CN or a SAN).
    """

    roles: Mapping[str, tuple[str, ...]]
    users: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        for user, roles in self.users.items():
            unknown = [role for role in roles if role not in self.roles]
            if unknown:
                raise AuthConfigError(
                    f"user {user!r} has the role(s) {', '.join(unknown)}, which "
                    f"'roles' does not define"
                )

    def check(self, known: Sequence[str]) -> None:
        """Raise ``AuthConfigError`` for a role granting what ``known`` lacks."""
        for role, patterns in self.roles.items():
            try:
                granted(patterns, known)
            except AuthConfigError as error:
                raise AuthConfigError(f"role {role!r}: {error}") from error

    @classmethod
    def read(cls, path: Path) -> AuthConfig:
        """Read a JSON file, or YAML for a ``.yaml`` or ``.yml`` one (which needs
        PyYAML); raises ``AuthConfigError`` saying what is wrong."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise AuthConfigError(f"cannot read {path}: {error}") from error
        try:
            data = _parse(text, path)
        except ValueError as error:  # JSON's and YAML's errors both derive from it
            raise AuthConfigError(f"{path} does not parse: {error}") from error
        return cls.from_data(data, str(path))

    @classmethod
    def from_data(cls, data: Any, source: str = "the permissions") -> AuthConfig:
        """From ``{"roles": {role: [permission...]}, "users": {user: [role...]}}``."""
        if not isinstance(data, dict) or set(data) - {"roles", "users"}:
            raise AuthConfigError(
                f"{source} must be a mapping of 'roles' and 'users', nothing else"
            )
        roles = _lists(data.get("roles", {}), f"{source}: roles")
        users = _lists(data.get("users", {}), f"{source}: users")
        return cls(roles, users)


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() not in (".yaml", ".yml"):
        return json.loads(text)
    try:
        import yaml  # noqa: PLC0415 - optional: only YAML files need it
    except ImportError as error:
        raise AuthConfigError(
            f"{path} is YAML, which needs PyYAML (pip install pyyaml); or write "
            f"it as JSON"
        ) from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from error


def _lists(data: Any, where: str) -> dict[str, tuple[str, ...]]:
    """A mapping of names to lists of names, checked."""
    if not isinstance(data, dict):
        raise AuthConfigError(f"{where} must be a mapping of names to lists")
    lists: dict[str, tuple[str, ...]] = {}
    for name, values in data.items():
        if not isinstance(values, list) or not all(
            isinstance(value, str) and value for value in values
        ):
            raise AuthConfigError(f"{where}: {name!r} must map to a list of names")
        lists[str(name)] = tuple(values)
    return lists
