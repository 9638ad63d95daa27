"""One generic name -> object registry with "did you mean" on a miss.

Registration is by explicit import of the module that defines the object; nothing walks packages.
A lower layer that looks a name up (`load()` replaying an edit kind) need not import the packages
above it that register names: the package root, which Python imports before any submodule, lists
them in `condense.REGISTRY_PROVIDERS` (registry kind -> module names), and a lookup that misses
imports them once and looks again.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from condense.core.errors import ConfigError, UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects (model factories, dataset loaders, method handlers)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Callable[[T], T] | T:
        """Register `obj` under `name`; usable as `@registry.register("name")`."""

        def _add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            doc = help or (getattr(o, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        if name not in self._items:
            self.load_providers()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; known: {known}"
            ) from None

    def load_providers(self) -> None:
        """Import the modules the package root names for this registry's kind (cheap once imported)."""
        providers = getattr(sys.modules.get("condense"), "REGISTRY_PROVIDERS", {})
        for module in providers.get(self.kind, ()):
            importlib.import_module(module)

    def help(self, name: str) -> str:
        self.get(name)
        return self._help.get(name, "")

    def names(self) -> list[str]:
        """Every registered name, the providers' included."""
        self.load_providers()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.load_providers()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
