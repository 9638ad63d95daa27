"""One generic name -> object registry with "did you mean" on a miss.

Registration is by explicit import of the module that defines the object; nothing walks packages.
"""
from __future__ import annotations

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
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; known: {known}"
            ) from None

    def help(self, name: str) -> str:
        self.get(name)
        return self._help.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
