"""What a kernel author imports to write and run an ArmoniK worker."""

__all__: list[str] = []
