"""From a meta-device model whose shapes passed the header check to real storage: uninitialised
tensors (or a second real build where that is not safe), and tied parameters made one again."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.models.hf import HFModel


def materialize_model(model: nn.Module, build: Any, device: str | torch.device) -> nn.Module:
    """Real (uninitialised) storage for a meta-device model whose shapes passed the header check;
    `load_state_strict` then fills every persistent tensor. Non-persistent buffers (not in the
    weights file) are re-initialised by transformers for a Hugging Face model; any other model
    that has them, or that keeps tensors outside its parameters and buffers, is built again for
    real with `build` (the metadata already matched the weights)."""
    owners = [m for m in model.modules() if any(m._buffers.get(b) is not None for b in m._non_persistent_buffers_set)]
    if _stray_tensors(model) or (owners and not isinstance(model, HFModel)):
        return build().to(device)
    model.to_empty(device=device)
    if owners:
        unsaved = [t for m in owners for b, t in m._buffers.items() if t is not None and b in m._non_persistent_buffers_set]
        with torch.no_grad():
            for t in unsaved:  # a value no initialiser writes: what is still all sentinel was not re-initialised
                t.fill_(_sentinel(t.dtype))
            for m in owners:
                model.hf._init_weights(m)  # type: ignore[union-attr]
        if any(t.numel() and bool((t == _sentinel(t.dtype)).all()) for t in unsaved):
            return build().to(device)
    return model


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Names of the parameters that are one Parameter object held under several names (a tied LM
    head and word embedding), one list per shared Parameter."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def retie(model: nn.Module, ties: list[list[str]]) -> None:
    """Make every name of each group hold its first name's Parameter again."""
    for names in ties:
        first = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            (model.get_submodule(owner) if owner else model)._parameters[attr] = first


def _sentinel(dtype: torch.dtype) -> float | int | bool:
    if dtype.is_floating_point or dtype.is_complex:
        return float("inf")
    return True if dtype == torch.bool else torch.iinfo(dtype).min


def _stray_tensors(model: nn.Module) -> bool:
    """Whether a module keeps a tensor in a plain attribute (to_empty would leave it on meta)."""
    return any(isinstance(v, torch.Tensor) for m in model.modules() for k, v in vars(m).items()
               if k not in ("_parameters", "_buffers"))
