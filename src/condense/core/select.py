"""The one layer-selection language: exact module names, `re:<regex>`, or module type names.

`targets=["Conv2d", "re:^classifier\\.", "features.0"]` selects every Conv2d, every module whose
qualified name matches the regex, and the module named exactly `features.0`. A pattern that
matches nothing is an error (it is almost always a typo), listing close names.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from condense.core.errors import ConfigError, did_you_mean


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    if name == pattern:
        return True
    return any(cls.__name__ == pattern for cls in type(module).__mro__ if cls is not object)


def _validate(pattern: str, field: str) -> None:
    if not isinstance(pattern, str):
        raise ConfigError(f"{field}: patterns are strings (name, 're:<regex>' or a type name), got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise ConfigError(f"{field}: bad regular expression {pattern!r}: {e}") from None


def select_modules(
    model: nn.Module,
    targets: Sequence[str] | str | None = None,
    ignore: Sequence[str] | str | None = None,
    *,
    default: Sequence[str] = (),
    field: str = "targets",
) -> dict[str, nn.Module]:
    """Return `{qualified_name: module}` matched by `targets` minus those matched by `ignore`.

    `targets=None` uses `default` (e.g. `("Conv2d", "Linear")`). Each pattern in `targets` and
    `ignore` must match at least one module, else ConfigError with close names.
    """
    targets = [targets] if isinstance(targets, str) else list(targets if targets is not None else default)
    ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
    named = [(n, m) for n, m in model.named_modules() if n]
    all_names = [n for n, _ in named]
    type_names = sorted({type(m).__name__ for _, m in named})

    def _apply(patterns: list[str], fld: str) -> set[str]:
        hit: set[str] = set()
        for p in patterns:
            _validate(p, fld)
            found = {n for n, m in named if _matches(p, n, m)}
            if not found:
                raise ConfigError(
                    f"{fld}: pattern {p!r} matches no module{did_you_mean(p, all_names + type_names)}"
                )
            hit |= found
        return hit

    chosen = _apply(targets, field)
    dropped = _apply(ignore, "ignore")
    return {n: m for n, m in named if n in chosen and n not in dropped}
