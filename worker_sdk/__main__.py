"""Entry point of the worker server: ``python -m worker_sdk MODULE:CLASS``."""

import sys


def main() -> int:
    print("python -m worker_sdk: the worker server is not part of this release yet")
    return 2


if __name__ == "__main__":
    sys.exit(main())
