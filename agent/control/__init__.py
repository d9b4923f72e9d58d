"""The control plane: the client-facing services of the grid over a backend."""

from __future__ import annotations

from agent.control._config import ControlPlaneConfig
from agent.control._server import SERVED_SERVICES, ControlPlane

__all__ = ["SERVED_SERVICES", "ControlPlane", "ControlPlaneConfig"]
