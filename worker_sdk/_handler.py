"""``TaskHandler`` and the ``kernel`` decorator that marks its kernels."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, overload

from worker_sdk._errors import KernelNotFound

__all__ = ["TaskHandler", "kernel"]

F = TypeVar("F", bound=Callable[..., Any])

_KERNEL_NAME = "__gridpod_kernel__"


@overload
def kernel(function: F, /) -> F: ...
@overload
def kernel(name: str | None = None, /) -> Callable[[F], F]: ...


def kernel(target: Any = None, /) -> Any:
    """Mark a method of a ``TaskHandler`` as a kernel.

    ``@kernel`` names the kernel after the method; ``@kernel("name")`` names it
    explicitly. A task chooses its kernel with the task option ``kernel``.
    """
    if callable(target):
        setattr(target, _KERNEL_NAME, target.__name__)
        return target
    if target is not None and (not isinstance(target, str) or not target):
        raise TypeError(f"a kernel name must be a non-empty string, not {target!r}")

    def mark(function: F) -> F:
        setattr(function, _KERNEL_NAME, target or function.__name__)
        return function

    return mark


class TaskHandler:
    """Base class of a worker's task handler: subclass it and mark kernels.

    Optional hooks, each plain or ``async``: ``on_start`` before the first task,
    ``on_stop`` after the last, ``on_session_enter(session_id)`` when tasks of a new
    session start arriving and ``on_session_leave(session_id)`` when they stop.
    """

    _kernels: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kernels: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                name = getattr(value, _KERNEL_NAME, None)
                if name is None:
                    continue
                owner = kernels.get(name)
                if owner is not None and owner != attribute:
                    raise TypeError(
                        f"{cls.__name__}: kernel name {name!r} is used by both "
                        f"{owner!r} and {attribute!r}"
                    )
                kernels[name] = attribute
        cls._kernels = kernels

    @classmethod
    def kernel_names(cls) -> list[str]:
        return sorted(cls._kernels)

    def resolve_kernel(self, name: str | None) -> tuple[str, Callable[..., Any]]:
        """The kernel a task runs: the one named, or the only one there is."""
        if name is None:
            if len(self._kernels) == 1:
                name = next(iter(self._kernels))
            else:
                raise KernelNotFound(
                    "the task names no kernel (task option 'kernel') and "
                    f"{type(self).__name__} has {self._describe_kernels()}"
                )
        attribute = self._kernels.get(name)
        if attribute is None:
            raise KernelNotFound(
                f"no kernel named {name!r}: {type(self).__name__} has "
                f"{self._describe_kernels()}"
            )
        return name, getattr(self, attribute)

    def _describe_kernels(self) -> str:
        names = self.kernel_names()
        if not names:
            return "no kernels (mark methods with @kernel)"
        return "kernels " + ", ".join(repr(n) for n in names)

    def on_start(self) -> Any:
        """Called once before the worker accepts tasks."""

    def on_stop(self) -> Any:
        """Called once after the worker finished its last task."""

    def on_session_enter(self, session_id: str) -> Any:
        """Called before the first task of ``session_id`` runs."""

    def on_session_leave(self, session_id: str) -> Any:
        """Called when the worker moves on from ``session_id``, or stops."""


def is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function)
