"""Strict JSON: everything condense prints or writes as JSON parses with any JSON parser.

Python's `json` writes a float NaN / infinity as the bare tokens `NaN` / `Infinity`, which are not
JSON: strict parsers (JavaScript's `JSON.parse`, `jq`, Go, Rust's serde) reject the whole document.
`strict_data` turns every non-finite float into `null` and warns once per document, naming the
fields; `dumps_strict` then serialises with `allow_nan=False`, so a case the conversion missed
fails loudly instead of writing invalid JSON. Imports no torch.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["dumps_strict", "plain_default", "strict_data"]

#: how many field names a warning lists before it says "and N more"
_NAMED = 5


def plain_default(o: Any) -> Any:
    """Plain data for the objects condense's records hold: `to_dict()`, paths, numpy and torch
    scalars / arrays (anything with `tolist()`). Anything else is a TypeError, as in `json`."""
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "item") and getattr(o, "shape", None) == ():  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def strict_data(obj: Any, *, default: Callable[[Any], Any] | None = plain_default, what: str = "JSON") -> Any:
    """`obj` as plain JSON data (dicts, lists, str, int, finite float, bool, None), with every
    NaN / +-infinity replaced by None. One `RuntimeWarning` names the replaced fields (`what` says
    which document). `default` turns other objects into plain data (as `json.dumps(default=)`)."""
    replaced: list[str] = []
    out = _walk(obj, "", default, replaced, 0)
    if replaced:
        named = ", ".join(replaced[:_NAMED]) + (f" and {len(replaced) - _NAMED} more" if len(replaced) > _NAMED else "")
        warnings.warn(f"{what}: non-finite numbers are not valid JSON, written as null: {named}", RuntimeWarning,
                      stacklevel=2)
    return out


def _walk(o: Any, path: str, default: Callable[[Any], Any] | None, replaced: list[str], depth: int) -> Any:
    if depth > 200:
        raise ValueError(f"{path or 'the document'}: nested more than 200 levels deep (a cycle?)")
    if o is None or isinstance(o, (str, bool)):
        return o
    if isinstance(o, int):
        return int(o)
    if isinstance(o, float):
        if math.isfinite(o):
            return float(o)
        replaced.append(f"{path or 'the value'} ({o})")
        return None
    if isinstance(o, Mapping):
        return {_key(k): _walk(v, f"{path}.{k}" if path else str(k), default, replaced, depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_walk(v, f"{path}[{i}]", default, replaced, depth + 1) for i, v in enumerate(o)]
    if default is None:
        raise TypeError(f"{path or 'the value'}: not JSON serialisable: {type(o).__name__}")
    return _walk(default(o), path, default, replaced, depth + 1)


def _key(k: Any) -> Any:
    if k is None or isinstance(k, (str, bool, int)):
        return k
    if isinstance(k, float):  # json writes float keys as strings; NaN would become "NaN": keep that
        return repr(k) if not math.isfinite(k) else k
    return str(k)


def dumps_strict(obj: Any, *, default: Callable[[Any], Any] | None = plain_default, what: str = "JSON",
                 **kwargs: Any) -> str:
    """`json.dumps` of `strict_data(obj)` with `allow_nan=False` (other keywords: indent, ...)."""
    return json.dumps(strict_data(obj, default=default, what=what), allow_nan=False, **kwargs)
