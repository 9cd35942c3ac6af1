"""String registries, as timm and torchvision keep them: ``@REGISTRY.register("name")`` on a class
or function, ``REGISTRY.lookup("name")`` to get it back. Puzzles, flow backends, backbones, fusion
blocks and methods each have one; a student's addition plugs in without touching library code.

A registry of the library core may be filled by a module of a higher layer: the fusion blocks
live with their papers in :mod:`fusionkit.methods`, one layer above the contract in
:mod:`fusionkit.fusion`. Such a registry names that module as its ``provider`` and imports it the
first time it is read, so the core never imports upwards at import time and
``build_fusion("conv", ...)`` still finds the paper's block.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")


def _same_definition(a, b) -> bool:
    """Whether ``b`` is ``a`` defined again: the same module and qualified name (a notebook cell
    or a reloaded module run a second time), not a different object that wants the name."""
    key = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", None))  # noqa: E731
    return key(a)[1] is not None and key(a) == key(b)


class Registry(dict):
    """A ``dict`` from names to registered objects, which refuses to give one name to two objects
    and says what is registered when asked for a name it lacks. Defining the same class again
    (re-running a notebook cell that registers a student's block) replaces the old definition.
    ``provider``: a module that registers the built-in entries, imported on first read (and before
    a registration from outside it, so a new entry cannot take a built-in's name). ``entries``: the
    registry's own built-in entries, stored without importing the provider (the provider may import
    the module that defines the registry)."""

    def __init__(self, kind: str, provider: str | None = None, entries: Mapping[str, object] | None = None):
        super().__init__(entries or {})
        self.kind = kind
        self._provider = provider

    def _load(self) -> None:
        if self._provider is not None:
            provider, self._provider = self._provider, None
            importlib.import_module(provider)

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if self._provider is not None and self._provider not in sys.modules:
                self._load()  # a registration from outside the provider: the built-ins first
            if dict.__contains__(self, name) and self[name] is not obj and not _same_definition(self[name], obj):
                raise ValueError(f"a {self.kind} named {name!r} is already registered "
                                 f"({getattr(self[name], '__qualname__', self[name])!r})")
            dict.__setitem__(self, name, obj)
            return obj

        return wrap

    def lookup(self, name: str):
        self._load()
        if name not in self:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
        return self[name]

    # reading the registry in any way first loads its provider
    def __contains__(self, name) -> bool:
        self._load()
        return dict.__contains__(self, name)

    def __iter__(self):
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def keys(self):
        self._load()
        return dict.keys(self)

    def values(self):
        self._load()
        return dict.values(self)

    def items(self):
        self._load()
        return dict.items(self)
