"""``python -m worker_sdk MODULE:CLASS``: the worker's entry point."""

from worker_sdk._cli import entry_point

if __name__ == "__main__":
    entry_point()
