"""``python -m agent``: the same as the ``agent`` command."""

from agent.cli import main

if __name__ == "__main__":
    main(prog_name="agent")
