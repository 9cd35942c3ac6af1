"""String registries, as timm and torchvision keep them: ``@REGISTRY.register("name")`` on a class
or function, ``REGISTRY.lookup("name")`` to get it back. Puzzles, flow backends, backbones, fusion
blocks, models and methods each have one; a student's addition plugs in without touching library code.
"""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def _same_definition(a, b) -> bool:
    """Whether ``b`` is ``a`` defined again: the same module and qualified name (a notebook cell
    or a reloaded module run a second time), not a different object that wants the name."""
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", None))  # noqa: E731
    return key(a)[1] is not None and key(a) == key(b)


class Registry(dict):
    """A ``dict`` from names to registered objects, which refuses to give one name to two objects
    and says what is registered when asked for a name it lacks. Defining the same class again
    (re-running a notebook cell that registers a student's block) replaces the old definition."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self and self[name] is not obj and not _same_definition(self[name], obj):
                raise ValueError(f"a {self.kind} named {name!r} is already registered "
                                 f"({getattr(self[name], '__qualname__', self[name])!r})")
            self[name] = obj
            return obj

        return wrap

    def lookup(self, name: str):
        if name not in self:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
        return self[name]
