"""Which layers a pruning method touches: the one selection language, widened to sub-layers.

`targets` / `ignore` use `condense.core.select` patterns (exact names, `re:<regex>`, type
names). A selected container (e.g. `features.2`) stands for the prunable layers inside it.
`targets=None` means every prunable layer. A pattern that matches nothing is an error.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from condense.core.errors import ConfigError
from condense.core.select import select_modules

Patterns = Sequence[str] | str | None


def _expand(names: set[str], candidates: list[str]) -> set[str]:
    return {c for c in candidates if any(c == n or c.startswith(n + ".") for n in names)}


def select_layers(
    model: nn.Module, targets: Patterns, ignore: Patterns, kinds: tuple[type[nn.Module], ...], what: str
) -> dict[str, nn.Module]:
    """`{name: module}` of layers of `kinds` selected by `targets` minus `ignore` (in model order)."""
    named = [(n, m) for n, m in model.named_modules() if n and isinstance(m, kinds)]
    candidates = [n for n, _ in named]
    if targets is None:
        chosen = set(candidates)
    else:
        chosen = _expand(set(select_modules(model, targets, field="targets")), candidates)
    if ignore:
        chosen -= _expand(set(select_modules(model, ignore, field="ignore")), candidates)
    if not chosen:
        kinds_txt = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"{what}: the selection (targets={targets!r}, ignore={ignore!r}) leaves no {kinds_txt} layer to work on")
    return {n: m for n, m in named if n in chosen}
