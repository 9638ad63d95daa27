"""Channel importance scorers for structured pruning, aggregated over a dependency group.

Each member layer gives a per-channel score vector; vectors are normalised by their mean and
summed, so a group's score weighs every coupled layer equally whatever its size.

* "l1" / "l2": norm of each unit's weights in every matrix member (Conv / Linear / Conv1D /
  embedding), as filters (outputs) and as consumer columns (inputs) (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
* "bn_gamma": |gamma| of the group's BatchNorm layers (Liu et al. 2017, network slimming).
* "taylor": first-order Taylor |w * dL/dw| summed over each channel's weights and over a few
  batches (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning").
* "gradient": a gate of ones multiplies each unit where every consumer layer reads it (the input
  columns of the Linear / Conv / Conv1D after it: a head's slice of the output projection, an FFN
  neuron's column of the down projection); the score is E_x |dL/d gate| (Michel, Levy & Neubig
  2019, "Are Sixteen Heads Really Better than One?", for any group, not only BERT heads). L is
  cross-entropy when the batch has a `target` and the output is class logits, else the random
  projection of `prune.heads.calibration_loss` (an encoder's output change). Needs `data`.
* "random": uniform scores (the baseline).
* "fpgm": distance to the other filters (`condense/prune/fpgm.py`, He et al. 2019).

Each is a `Scorer` registered in `condense.prune.config.SCORERS`; `group_scores` looks the name up.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.data.loader import as_source
from condense.export.onnx import output_tensor
from condense.models.signature import batch_to, call_model, model_inputs
from condense.prune.config import SCORERS, Scorer
from condense.prune.graph import CONVS, NORMS, Group, Member, layer_kinds
from condense.prune.heads import calibration_loss


def channel_view(t: torch.Tensor, mem: Member, size: int) -> torch.Tensor:
    """Rows = the group's `size` units of tensor `t` along the member's dim, one row per unit."""
    t = t.transpose(0, mem.dim) if mem.dim else t
    idx = mem.offset + torch.arange(size * mem.expand, device=t.device)
    return t[idx].reshape(size, -1)


def normalised_sum(vectors: list[torch.Tensor], size: int) -> torch.Tensor:
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
        rows = channel_view(t, mem, group.size)
        vecs.append(rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1).sqrt())
    return normalised_sum(vecs, group.size)


def bn_gamma_score(model: nn.Module, group: Group) -> torch.Tensor | None:
    modules = dict(model.named_modules())
    tensors = _weights(model)
    vecs = []
    for mem in group.members:
        m = modules.get(mem.module)
        if mem.role == "chan" and isinstance(m, NORMS) and m.affine and mem.param == f"{mem.module}.weight":
            vecs.append(channel_view(tensors[mem.param], mem, group.size).abs().sum(1))
    return normalised_sum(vecs, group.size) if vecs else None


def taylor_grads(model: nn.Module, data: Iterable[dict[str, Any]] | None, batches: int) -> dict[str, torch.Tensor]:
    """Sum over `batches` batches of |w * dL/dw| (cross-entropy on the labels) per weight.

    `data`: an iterable of batch dicts, or anything `condense.data.loader.as_source` takes.

    Runs in eval mode (BatchNorm statistics are not touched) and leaves `.grad` as it found it.
    """
    if data is None:
        raise ConfigError("importance 'taylor' needs labelled data: pass prune(..., data=...)")
    if not isinstance(data, list | tuple):
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
        vecs.append(channel_view(g, mem, group.size).sum(1))
    return normalised_sum(vecs, group.size)


def _batches(data: Any, n: int) -> list[Any]:
    if data is None:
        raise ConfigError("importance 'gradient' needs data: pass prune(..., data=...)")
    if not isinstance(data, list | tuple):
        with contextlib.suppress(ConfigError):
            data = as_source(data).batches(32)
    out = []
    for b in data:
        if len(out) >= n:
            break
        out.append(b)
    if not out:
        raise ConfigError("importance 'gradient': the data yielded no batch")
    return out


def _gate_loss(model: nn.Module, out: Any, batch: Any, generator: torch.Generator) -> torch.Tensor:
    out = output_tensor(out)
    if isinstance(batch, dict) and "target" in batch and out.dim() == 2 and getattr(model, "task", None) is None:
        return F.cross_entropy(out.float(), batch["target"].to(out.device).long(), reduction="sum")
    return calibration_loss(model, out, batch if isinstance(batch, dict) else {}, generator)


def gradient_scores(model: nn.Module, groups: list[Group], data: Any, batches: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gate-gradient importance of every unit of every group (module docstring, "gradient")."""
    modules = dict(model.named_modules())
    kinds = layer_kinds()
    sites: dict[str, list[tuple[str, Member]]] = {}  # consumer module -> (group root, member)
    for g in groups:
        for mem in g.members:
            m = modules.get(mem.module)
            if mem.role == "in" and isinstance(m, kinds) and mem.param == f"{mem.module}.weight":
                sites.setdefault(mem.module, []).append((g.root, mem))
    # a group no layer reads (an unused pooler) scores 0: removing it changes nothing
    size = {g.root: g.size for g in groups}
    gates: list[tuple[str, torch.Tensor]] = []

    def hook(name: str) -> Any:
        def pre(m: nn.Module, args: tuple[Any, ...]) -> Any:
            x = args[0]
            dim = 1 if isinstance(m, CONVS) else x.dim() - 1
            scale = torch.ones(x.shape[0], x.shape[dim], dtype=x.dtype, device=x.device)
            parts = []
            for root, mem in sites[name]:
                gate = torch.ones(x.shape[0], size[root], dtype=x.dtype, device=x.device, requires_grad=True)
                gates.append((root, gate))
                end = mem.offset + size[root] * mem.expand
                parts.append((mem.offset, end, gate.repeat_interleave(mem.expand, dim=1)))
            pieces, pos = [], 0
            for start, end, g in sorted(parts, key=lambda t: t[0]):
                pieces += [scale[:, pos:start], g]
                pos = end
            pieces.append(scale[:, pos:])
            full = torch.cat(pieces, dim=1)
            shape = [x.shape[0]] + [1] * (x.dim() - 1)
            shape[dim] = x.shape[dim]
            return (x * full.view(shape), *args[1:])
        return pre

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in sites]
    sums = {g.root: torch.zeros(g.size) for g in groups}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for batch in _batches(data, batches):
            gates.clear()
            inputs = batch_to(model_inputs(model, batch) if isinstance(batch, dict) else batch, device)
            with torch.enable_grad():
                out = call_model(model, inputs)
                tgt = batch_to(batch, device) if isinstance(batch, dict) else {}
                _gate_loss(model, out, {**tgt, **(inputs if isinstance(inputs, dict) else {})}, generator).backward()
            for root, gate in gates:
                if gate.grad is not None:
                    sums[root] += gate.grad.abs().sum(0).float().cpu()
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    if all(float(v.sum()) == 0.0 for v in sums.values()):
        raise RunError("importance 'gradient': every gate gradient was zero on the data; use 'l1'")
    return sums


def group_scores(
    model: nn.Module,
    groups: list[Group],
    importance: str,
    *,
    data: Iterable[dict[str, Any]] | None = None,
    taylor_batches: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """`{group root: per-channel importance}` (higher = keep) for the given groups, by the scorer
    registered in `SCORERS` under `importance`."""
    scorer = SCORERS.get(importance)
    state = scorer.prepare(model, groups, data, taylor_batches, seed) if scorer.prepare is not None else None
    out: dict[str, torch.Tensor] = {}
    fallback: list[str] = []
    for g in groups:
        s = scorer.score(model, g, state)
        if s is None:
            fallback.append(g.root)
            s = magnitude_score(model, g, 1)
        out[g.root] = s
    if fallback:
        warnings.warn(f"importance {importance!r}: groups it cannot score were scored by L1 instead: "
                      f"{', '.join(fallback)}", stacklevel=3)
    return out


SCORERS.register("l1", Scorer(lambda m, g, _: magnitude_score(m, g, 1)),
                 help="L1 norm of each unit's weights (Li et al. 2017)")
SCORERS.register("l2", Scorer(lambda m, g, _: magnitude_score(m, g, 2)), help="L2 norm of each unit's weights")
SCORERS.register("bn_gamma", Scorer(lambda m, g, _: bn_gamma_score(m, g)),
                 help="|gamma| of the group's BatchNorm (Liu et al. 2017, network slimming); L1 where none")
SCORERS.register("taylor", Scorer(lambda m, g, grads: taylor_score(grads, g),
                                  prepare=lambda m, gs, data, n, seed: taylor_grads(m, data, n), needs_data=True),
                 help="first-order Taylor |w dL/dw| (Molchanov et al. 2019); labelled data")
SCORERS.register("gradient", Scorer(lambda m, g, gated: gated[g.root], prepare=gradient_scores, needs_data=True),
                 help="E|dL/d gate| of a gate on each unit (Michel et al. 2019); data, labels optional")
SCORERS.register("random", Scorer(lambda m, g, gen: torch.rand(g.size, generator=gen),
                                  prepare=lambda m, gs, data, n, seed: torch.Generator().manual_seed(seed)),
                 help="uniform scores (the baseline)")
