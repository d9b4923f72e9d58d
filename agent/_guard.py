"""``python -m agent._guard PARENT_PID -- COMMAND...``: run COMMAND so that it gets
SIGTERM when the process PARENT_PID dies, even by SIGKILL.

``agent local`` starts its pods' processes through it, so that killing ``agent
local`` outright leaves no agent or worker behind. Linux only (``prctl``); elsewhere
the command simply runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# As shells do for a command that cannot be executed.
_NOT_STARTED = 127


def _die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not fatal: the command runs unguarded
    # The parent may have died before prctl took effect.
    if os.getppid() != parent:
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.exit("usage: python -m agent._guard PARENT_PID -- COMMAND...")
    _die_with_parent(int(argv[0]))
    command = argv[2:]
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"cannot start {command[0]}: {error}", file=sys.stderr)
        sys.exit(_NOT_STARTED)


if __name__ == "__main__":
    main(sys.argv[1:])
