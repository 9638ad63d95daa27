"""Weight masks as `torch.nn.utils.parametrize` parametrizations, and their make-permanent step.

A masked layer computes with `weight = original * mask`; the zeros stay zeros while training
(their gradient is masked too). Masks do not make a model smaller or faster: `make_permanent`
bakes them into plain weights (still dense, with zeros). Both steps are recorded in the edit log
(`prune_masks`, `prune_unmask`) so a saved masked model reloads with strict key matching.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from condense.core.errors import ConfigError
from condense.core.linear import conv1d_class
from condense.models.edits import EDITS, record_edit

#: Layer types whose `weight` can be masked (and counted by `sparsity_report`); `maskable_kinds()`
#: adds transformers' Conv1D (GPT-2's Linear, weight stored (in, out)) once transformers is loaded.
MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def maskable_kinds() -> tuple[type[nn.Module], ...]:
    """`MASKABLE` plus transformers' Conv1D when transformers is loaded (`condense.core.linear`)."""
    cls = conv1d_class()
    return MASKABLE if cls is None else (*MASKABLE, cls)


class WeightMask(nn.Module):
    """Parametrization `w -> w * mask`; `mask` is a float buffer of 0s and 1s (saved with the model)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().float())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def get_mask(module: nn.Module) -> WeightMask | None:
    """The module's `WeightMask` on `weight`, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:
        if isinstance(p, WeightMask):
            return p
    return None


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The unmasked weight tensor (the parametrization's `original`, or `weight` itself)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Install or update `WeightMask`s on the named layers; records newly masked layers."""
    modules = dict(model.named_modules())
    new: list[str] = []
    for name, mask in masks.items():
        module = modules[name]
        if tuple(mask.shape) != tuple(raw_weight(module).shape):
            raise ConfigError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight {tuple(raw_weight(module).shape)}")
        current = get_mask(module)
        if current is None:
            parametrize.register_parametrization(module, "weight", WeightMask(mask.to(raw_weight(module).device)))
            new.append(name)
        else:
            current.mask.copy_(mask)
    if new:
        record_edit(model, "prune_masks", modules=new)


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if get_mask(m) is not None}


def _unparametrize(module: nn.Module) -> None:
    """`remove_parametrizations(..., leave_parametrized=True)` on `weight`, without side effects on copies.

    torch deletes the `weight` property from the module's *class*, and `copy.deepcopy` of a
    parametrized module shares that dynamically created class; baking the masks of a copy would
    silently break the original (and vice versa). Give the module a private class first.
    """
    cls = module.__class__
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake every mask into a plain dense `weight` (zeros kept) and remove the parametrizations.

    The result has ordinary state-dict keys, so it exports like any model. It is still dense: the
    zeros only save space once stored compressed or run by a sparse kernel (see `report`).
    """
    names = list(masked_layers(model))
    modules = dict(model.named_modules())
    for name in names:
        _unparametrize(modules[name])
    if names:
        record_edit(model, "prune_unmask", modules=names)
    return model


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Fraction of exactly-zero weights per Linear/Conv layer (transformers' Conv1D included) and over all of them.

    Returns `{"layers": {name: {"numel", "zeros", "sparsity", "masked"}}, "global": {...}}`.
    """
    layers: dict[str, dict[str, Any]] = {}
    total = zeros = 0
    kinds = maskable_kinds()
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, kinds):
                continue
            w = module.weight
            n, z = w.numel(), int((w == 0).sum())
            layers[name] = {"numel": n, "zeros": z, "sparsity": z / max(n, 1), "masked": get_mask(module) is not None}
            total, zeros = total + n, zeros + z
    return {"layers": layers, "global": {"numel": total, "zeros": zeros, "sparsity": zeros / max(total, 1)}}


def _replay_masks(model: nn.Module, modules: list[str]) -> None:
    named = dict(model.named_modules())
    for name in modules:
        if name not in named:
            raise ConfigError(f"prune_masks replay: the model has no module {name!r}")
        m = named[name]
        if get_mask(m) is None:
            parametrize.register_parametrization(m, "weight", WeightMask(torch.ones_like(m.weight)))


def _replay_unmask(model: nn.Module, modules: list[str]) -> None:
    named = dict(model.named_modules())
    for name in modules:
        if name not in named or get_mask(named[name]) is None:
            raise ConfigError(f"prune_unmask replay: {name!r} is not a masked layer")
        _unparametrize(named[name])


EDITS.register("prune_masks", _replay_masks)
EDITS.register("prune_unmask", _replay_unmask)
