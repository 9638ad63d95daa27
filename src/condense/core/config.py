"""Config base class: small dataclasses that validate themselves and round-trip to plain dicts.

A recipe stage's `config:` mapping and the Python API take the same object:
`SomeConfig.from_dict(mapping)` rejects unknown keys (naming a close valid key), checks types,
parses nested configs, and `to_dict()` gives back plain data that `from_dict` accepts.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from condense.core.errors import ConfigError, did_you_mean

#: no config number is meaningfully larger: a value past these is a typo or an attack, refused early
MAX_INT = 2**31 - 1
MAX_MAGNITUDE = 1e12

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base for every method config. Subclasses are `@dataclass`es and may override `validate`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = _hints(type(self))[f.name]
            setattr(self, f.name, _coerce(value, hint, f"{type(self).__name__}.{f.name}"))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field when a value is out of range. Override."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
        """Build from a plain mapping; `where` (e.g. 'recipe.yaml:12 stage prune') prefixes errors."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        prefix = f"{where}: " if where else ""
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"{prefix}unknown key {key!r} for {cls.__name__}{did_you_mean(str(key), names)}; "
                    f"valid keys: {', '.join(names)}"
                )
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None
        except TypeError as e:
            raise ConfigError(f"{prefix}{cls.__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})


def _plain(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(value: Any, hint: Any, field: str) -> Any:
    """Check `value` against the annotation `hint`; convert the lossless cases (int->float, list->tuple)."""
    if hint is Any:
        return value
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except ConfigError:
                continue
        raise ConfigError(f"{field}: expected {_name(hint)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            hint_txt = did_you_mean(str(value), [str(a) for a in allowed])
            raise ConfigError(
                f"{field}: expected one of {', '.join(map(repr, allowed))}, got {value!r}{hint_txt}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{field}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False))]
        else:
            item = args[0] if args else Any
            items = [_coerce(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        k_t, v_t = get_args(hint) or (Any, Any)
        return {_coerce(k, k_t, field): _coerce(v, v_t, f"{field}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint.from_dict(value, where=field)
        raise ConfigError(f"{field}: expected a mapping for {hint.__name__}, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        if not math.isfinite(float(value)) or abs(float(value)) > MAX_MAGNITUDE:
            raise ConfigError(f"{field}: expected a finite number of magnitude <= {MAX_MAGNITUDE:.0e}, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{field}: expected an integer, got {value!r}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{field}: {value} is out of range (at most {MAX_INT:,} in magnitude)")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    return value


def _name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):  # typing.Union's own name is just "Union"
        return " | ".join("None" if a is type(None) else _name(a) for a in get_args(hint))
    if origin is Literal:
        return " | ".join(map(repr, get_args(hint)))
    if origin is not None:  # list[int], dict[str, float]: the alias says more than its origin's name
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
