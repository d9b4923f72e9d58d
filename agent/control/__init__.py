"""The control plane: the client-facing services of the grid over a backend."""

from __future__ import annotations

from agent.control._config import ControlPlaneConfig
from agent.control._policy import SEE_ALL_SESSIONS, AuthConfig, AuthConfigError
from agent.control._server import PERMISSIONS, SERVED_SERVICES, ControlPlane

__all__ = [
    "PERMISSIONS",
    "SEE_ALL_SESSIONS",
    "SERVED_SERVICES",
    "AuthConfig",
    "AuthConfigError",
    "ControlPlane",
    "ControlPlaneConfig",
]
