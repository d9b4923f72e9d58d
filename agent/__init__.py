"""The agent sidecar that feeds tasks to a worker, and the grid's control plane."""

__all__: list[str] = []
