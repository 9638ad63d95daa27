"""Channel importance scorers for structured pruning, aggregated over a dependency group.

Each member layer gives a per-channel score vector; vectors are normalised by their mean and
summed, so a group's score weighs every coupled layer equally whatever its size.

* "l1" / "l2": norm of each unit's weights in every matrix member (Conv / Linear / Conv1D /
  embedding), as filters (outputs) and as consumer columns (inputs) (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
* "bn_gamma": |gamma| of the group's BatchNorm layers (Liu et al. 2017, network slimming).
* "taylor": first-order Taylor |w * dL/dw| summed over each channel's weights and over a few
  batches (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning").
* "random": uniform scores (the baseline).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError
from condense.export.onnx import output_tensor
from condense.models.signature import batch_to, call_model
from condense.prune.graph import NORMS, Group, Member


def _channel_view(t: torch.Tensor, mem: Member, size: int) -> torch.Tensor:
    """Rows = the group's `size` units of tensor `t` along the member's dim, one row per unit."""
    t = t.transpose(0, mem.dim) if mem.dim else t
    idx = mem.offset + torch.arange(size * mem.expand, device=t.device)
    return t[idx].reshape(size, -1)


def _normalised_sum(vectors: list[torch.Tensor], size: int) -> torch.Tensor:
    total = torch.zeros(size)
    for v in vectors:
        v = v.detach().float().cpu()
        total += v / (v.mean() + 1e-12)
    return total


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters(remove_duplicate=False))


def magnitude_score(model: nn.Module, group: Group, p: int) -> torch.Tensor:
    """Norm of each unit's weights in every layer that makes or reads it (matrices, not biases)."""
    tensors = _weights(model)
    vecs = []
    for mem in group.members:
        t = tensors.get(mem.param)
        if mem.role == "chan" or t is None or t.dim() < 2:
            continue
        rows = _channel_view(t, mem, group.size)
        vecs.append(rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1).sqrt())
    return _normalised_sum(vecs, group.size)


def bn_gamma_score(model: nn.Module, group: Group) -> torch.Tensor | None:
    modules = dict(model.named_modules())
    tensors = _weights(model)
    vecs = []
    for mem in group.members:
        m = modules.get(mem.module)
        if mem.role == "chan" and isinstance(m, NORMS) and m.affine and mem.param == f"{mem.module}.weight":
            vecs.append(_channel_view(tensors[mem.param], mem, group.size).abs().sum(1))
    return _normalised_sum(vecs, group.size) if vecs else None


def taylor_grads(model: nn.Module, data: Iterable[dict[str, Any]] | None, batches: int) -> dict[str, torch.Tensor]:
    """Sum over `batches` batches of |w * dL/dw| (cross-entropy on the labels) per weight.

    `data`: an iterable of batch dicts, or anything `condense.data.loader.as_source` takes.

    Runs in eval mode (BatchNorm statistics are not touched) and leaves `.grad` as it found it.
    """
    if data is None:
        raise ConfigError("importance 'taylor' needs labelled data: pass prune(..., data=...)")
    if not isinstance(data, list | tuple):
        from condense.data.loader import as_source

        with contextlib.suppress(ConfigError):  # else: an iterable of batch dicts, used as it is
            data = as_source(data).batches(64)
    params = {}  # parameter name -> tensor; a masked layer's weight is `parametrizations.weight.original`
    for n, p in model.named_parameters():
        params[n.replace(".parametrizations.weight.original", ".weight")] = p
    saved = {n: p.grad for n, p in params.items()}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    device = next(iter(params.values())).device
    seen = 0
    try:
        for batch in data:
            if seen >= batches:
                break
            if not isinstance(batch, dict) or "target" not in batch:
                raise ConfigError("importance 'taylor': data must yield labelled batch dicts (the model's inputs and 'target')")
            for p in params.values():
                p.grad = None
            with torch.enable_grad():
                logits = output_tensor(call_model(model, batch_to(batch, device)))
                loss = F.cross_entropy(logits, batch["target"].to(device))
                loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    acc[n] += (p.detach() * p.grad).abs()
            seen += 1
    finally:
        model.train(was_training)
        for n, p in params.items():
            p.grad = saved[n]
    if seen == 0:
        raise ConfigError("importance 'taylor': the data yielded no batch")
    return acc


def taylor_score(grads: dict[str, torch.Tensor], group: Group) -> torch.Tensor:
    vecs = []
    for mem in group.members:
        g = grads.get(mem.param)
        if g is None:
            continue
        vecs.append(_channel_view(g, mem, group.size).sum(1))
    return _normalised_sum(vecs, group.size)


def group_scores(
    model: nn.Module,
    groups: list[Group],
    importance: str,
    *,
    data: Iterable[dict[str, Any]] | None = None,
    taylor_batches: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """`{group root: per-channel importance}` (higher = keep) for the given groups."""
    gen = torch.Generator().manual_seed(seed)
    grads = taylor_grads(model, data, taylor_batches) if importance == "taylor" else {}
    out: dict[str, torch.Tensor] = {}
    no_bn: list[str] = []
    for g in groups:
        if importance in ("l1", "l2"):
            out[g.root] = magnitude_score(model, g, 1 if importance == "l1" else 2)
        elif importance == "bn_gamma":
            s = bn_gamma_score(model, g)
            if s is None:
                no_bn.append(g.root)
                s = magnitude_score(model, g, 1)
            out[g.root] = s
        elif importance == "taylor":
            out[g.root] = taylor_score(grads, g)
        elif importance == "random":
            out[g.root] = torch.rand(g.size, generator=gen)
        else:
            raise ConfigError(f"unknown importance {importance!r}; known: l1, l2, bn_gamma, taylor, random")
    if no_bn:
        warnings.warn(f"importance 'bn_gamma': groups without BatchNorm scored by L1 instead: {', '.join(no_bn)}", stacklevel=3)
    return out
