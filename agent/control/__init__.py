"""The control plane: the client-facing services of the grid over a backend."""
