"""What a removed block becomes: `SkippedBlock` (the identity, called like the block, keeping its
plain attributes), how a block is called and what it returns, and the `drop_blocks` edit replay
that `load()` runs (registered on import)."""
from __future__ import annotations

import inspect
import types
from typing import Any

import torch
from torch import nn

from condense.core.errors import InputFileError
from condense.models.edits import EDITS

_PLAIN = (bool, int, float, str, type(None))


def _face(module: nn.Module, depth: int = 2) -> dict[str, Any]:
    """The plain attributes (flags, sizes, names) of `module` and, `depth` levels down, of its
    children: what third-party code reads off a layer it calls (`layers[0].self_attn.batch_first`)."""
    face = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"
            and (isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)))}
    if depth > 0:
        for k, child in module._modules.items():
            if child is not None:
                face[k] = types.SimpleNamespace(**_face(child, depth - 1))
    return face


class SkippedBlock(nn.Identity):
    """A removed block: called like it (any positional / keyword arguments), returns its first
    input, as a tensor (`returns=0`) or as a tuple of `returns` entries `(hidden, None, ...)`.
    It keeps no weights, only the plain attributes of the block it replaces (`_face`)."""

    def __init__(self, returns: int = 0, arg: str | None = None, face: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.returns = int(returns)
        self.arg = arg
        self.__dict__["face"] = dict(face or {})

    @classmethod
    def replacing(cls, block: nn.Module, returns: int = 0) -> SkippedBlock:
        return cls(returns, _first_param(block), _face(block))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            face = self.__dict__.get("face") or {}
            if name in face:
                return face[name]
            raise

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if args:
            x = args[0]
        elif self.arg is not None and self.arg in kwargs:
            x = kwargs[self.arg]
        else:
            x = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if x is None:
                raise TypeError("SkippedBlock: called without a tensor input")
        return x if self.returns == 0 else (x, *([None] * (self.returns - 1)))

    def extra_repr(self) -> str:
        return f"returns={'tensor' if self.returns == 0 else f'tuple of {self.returns}'}"


def _first_param(module: nn.Module) -> str | None:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    p = next((p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None)
    return p.name if p is not None else None


def first_input(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor a block is called with first (its hidden state), as `SkippedBlock` picks it."""
    if args:
        return args[0] if isinstance(args[0], torch.Tensor) else None
    name = _first_param(module)
    if name in kwargs:
        return kwargs[name] if isinstance(kwargs[name], torch.Tensor) else None
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def returns_of(out: Any) -> int | None:
    """0 for a tensor, n for a tuple / list of n entries led by a tensor, None otherwise."""
    if isinstance(out, torch.Tensor):
        return 0
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and type(out) in (tuple, list):
        return len(out)
    return None



def replay_drop(model: nn.Module, blocks: list[str], returns: dict[str, int] | None = None) -> None:
    for name in blocks:
        try:
            block = model.get_submodule(name)
        except AttributeError:
            raise InputFileError(f"edit log: 'drop_blocks' names {name!r}, which this architecture does not have") from None
        model.set_submodule(name, SkippedBlock.replacing(block, (returns or {}).get(name, 0)))


EDITS.register("drop_blocks", replay_drop)
