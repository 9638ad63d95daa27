"""Unstructured pruning: magnitude (Han et al. 2015), random, and N:M (Mishra et al. 2021) masks.

Scorers return masks; `masks.set_masks` installs them as parametrizations. Counts are exact:
a layer (or the global pool) at ratio r has exactly `round(r * numel)` masked weights, ties
broken by position. Already-masked weights score 0, so repeated calls (gradual pruning) only
ever grow a mask.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.core.linear import is_conv1d
from condense.prune.config import (
    PRUNERS,
    MagnitudeConfig,
    NMConfig,
    PruneContext,
    Pruner,
    RandomConfig,
)
from condense.prune.masks import get_mask, maskable_kinds, raw_weight, set_masks
from condense.prune.selection import select_layers


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with (mask applied), detached."""
    w = raw_weight(module).detach()
    mask = get_mask(module)
    return w * mask.mask if mask is not None else w


def _lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 everywhere except the `k` lowest scores (stable order breaks ties by position)."""
    flat = scores.flatten()
    mask = torch.ones_like(flat)
    if k > 0:
        order = torch.argsort(flat, stable=True)
        mask[order[:k]] = 0.0
    return mask.view_as(scores)


def masks_from_scores(scores: dict[str, torch.Tensor], ratio: float, scope: str) -> dict[str, torch.Tensor]:
    """Mask the `ratio` lowest-scoring weights per layer (`scope="layer"`) or over all layers."""
    if scope == "layer":
        return {n: _lowest_k_mask(s, round(ratio * s.numel())) for n, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float().cpu() for n in names]) if names else torch.zeros(0)
    mask = _lowest_k_mask(flat, round(ratio * flat.numel()))
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = mask[start:start + size].view_as(scores[n]).to(scores[n].device)
        start += size
    dead = [n for n in names if not bool(out[n].any())]
    if dead:
        warnings.warn(
            f"global pruning at {ratio:.0%} removes every weight of {', '.join(dead)}; "
            "use scope='layer' or ignore these layers", stacklevel=3,
        )
    return out


def magnitude_scores(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {n: effective_weight(m).abs() for n, m in layers.items()}


def random_scores(layers: dict[str, nn.Module], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniform scores; already-masked weights get 0 so masks only grow."""
    out = {}
    for n, m in layers.items():
        w = raw_weight(m)
        s = torch.rand(w.shape, generator=generator).to(w.device)
        mask = get_mask(m)
        out[n] = s * mask.mask if mask is not None else s
    return out


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` largest |w| in every `m` consecutive weights along each output row.

    Linear rows are the input features; a Conv row is `in_channels/groups * kh * kw` flattened
    in PyTorch order (channel-major). The row length must be divisible by `m`. A transformers
    Conv1D stores its weight (in, out): pass `weight.t()` and transpose the mask back
    (`layer_nm_mask`), so the groups still run along the input features.
    """
    rows = weight.detach().reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        raise ConfigError(f"row length {rows.shape[1]} is not divisible by m={m}")
    groups = rows.abs().reshape(rows.shape[0], -1, m)
    keep = torch.topk(groups, n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
    return mask.reshape(weight.shape)


def layer_nm_mask(module: nn.Module, n: int, m: int) -> torch.Tensor:
    """`nm_mask` of a layer's effective weight, groups along its input features, in the weight's
    own layout (a Conv1D's (in, out) weight is grouped along dim 0)."""
    w = effective_weight(module)
    if is_conv1d(module):
        return nm_mask(w.t(), n, m).t().contiguous()
    return nm_mask(w, n, m)


def _row_length(module: nn.Module) -> int:
    """Weights per output row (what N:M groups run along): a Conv1D's rows are its (in, out) columns."""
    w = raw_weight(module)
    return int(w.shape[0]) if is_conv1d(module) else int(w[0].numel())


def _layers(model: nn.Module, ctx: PruneContext, what: str) -> dict[str, nn.Module]:
    return select_layers(model, ctx.targets, ctx.ignore, maskable_kinds(), what)


def run_magnitude(model: nn.Module, cfg: MagnitudeConfig, ctx: PruneContext) -> nn.Module:
    """Magnitude pruning (Han et al. 2015, "Learning both Weights and Connections")."""
    layers = _layers(model, ctx, "magnitude pruning")
    set_masks(model, masks_from_scores(magnitude_scores(layers), cfg.ratio, cfg.scope))
    return model


def run_random(model: nn.Module, cfg: RandomConfig, ctx: PruneContext) -> nn.Module:
    """Random unstructured pruning at `ratio` per layer: the baseline."""
    layers = _layers(model, ctx, "random pruning")
    gen = torch.Generator().manual_seed(cfg.seed)
    set_masks(model, masks_from_scores(random_scores(layers, gen), cfg.ratio, "layer"))
    return model


def run_nm(model: nn.Module, cfg: NMConfig, ctx: PruneContext) -> nn.Module:
    """N:M sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").

    Layers whose row length is not a multiple of `m` (e.g. a first conv with 1 input channel and
    a 3x3 kernel: 9 weights per row) are skipped with a warning naming them.
    """
    layers = _layers(model, ctx, "N:M pruning")
    masks, skipped = {}, []
    for name, module in layers.items():
        row = _row_length(module)
        if row % cfg.m:
            skipped.append(f"{name} ({row} weights per row)")
            continue
        masks[name] = layer_nm_mask(module, cfg.n, cfg.m)
    if skipped:
        warnings.warn(f"N:M {cfg.n}:{cfg.m}: rows not divisible by {cfg.m}, left dense: {', '.join(skipped)}", stacklevel=3)
    if not masks:
        raise ConfigError(f"N:M {cfg.n}:{cfg.m}: no selected layer has rows divisible by {cfg.m}")
    set_masks(model, masks)
    return model


PRUNERS.register("magnitude", Pruner(MagnitudeConfig, run_magnitude), help="unstructured magnitude masks (layer or global)")
PRUNERS.register("random", Pruner(RandomConfig, run_random), help="unstructured random masks (baseline)")
PRUNERS.register("nm", Pruner(NMConfig, run_nm), help="N:M semi-structured masks (2:4 by default)")
