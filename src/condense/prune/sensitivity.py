"""Sensitivity analysis: metric versus pruning ratio per group (or layer), and a ratio allocation.

`layer_sensitivity` prunes one channel group (or, for "magnitude", one layer) at a time on a
deep copy, at each ratio, and records `eval_fn(copy)` (higher is better, e.g. accuracy) with the
copy's MACs and parameters. The result is plain data (a table / plot source). It also carries a
per-layer cost model, exact for Conv/Linear MACs and weights, so that `allocate_ratios` can
pick per-group ratios that meet a global MAC or parameter budget, pruning the least sensitive
groups most (the usual sensitivity-driven allocation, e.g. Li et al. 2017, Sec. 3.4).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.prune.config import ChannelConfig, PruneContext
from condense.prune.graph import CONVS, NORMS, Group, dependency_groups
from condense.prune.importance import group_scores
from condense.prune.masks import maskable_kinds
from condense.prune.mha import split_attention
from condense.prune.report import count_macs, count_params
from condense.prune.selection import select_layers
from condense.prune.structured import eligible_groups, example_tuple, keep_count
from condense.prune.surgery import apply_channel_pruning
from condense.prune.unstructured import magnitude_scores, masks_from_scores

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def layer_costs(model: nn.Module, inputs: tuple[torch.Tensor, ...], groups: list[Group]) -> dict[str, dict[str, Any]]:
    """Per Conv/Linear/BatchNorm: MACs, weight/bias counts, and which group owns which positions."""
    costs: dict[str, dict[str, Any]] = {}
    hooks = []

    def hook(name: str):
        def fn(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if isinstance(m, CONVS):
                macs = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear):
                macs = out.numel() * m.in_features
            else:
                macs = 0
            costs[name]["macs"] += int(macs)
        return fn

    for name, m in model.named_modules():
        if isinstance(m, CONVS + NORMS + (nn.Linear,)):
            depthwise = isinstance(m, CONVS) and m.groups > 1
            w = m.weight.numel() if getattr(m, "weight", None) is not None else 0
            b = m.bias.numel() if getattr(m, "bias", None) is not None else 0
            out_dim = m.num_features if isinstance(m, NORMS) else (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            in_dim = m.in_features if isinstance(m, nn.Linear) else getattr(m, "in_channels", out_dim)
            costs[name] = {"macs": 0, "weight": w, "bias": b, "out_dim": out_dim, "in_dim": in_dim,
                           "scales_with_in": not (depthwise or isinstance(m, NORMS)), "out": {}, "in": {}}
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        count_macs(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    for g in groups:
        for mem in g.members:
            if mem.module not in costs or mem.param != f"{mem.module}.weight":
                continue
            side = "in" if mem.role == "in" else "out"
            costs[mem.module][side][g.root] = costs[mem.module][side].get(g.root, 0) + g.size * mem.expand
    return costs


def layer_sensitivity(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], float],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    method: str = "channel",
    example_inputs: Any = None,
    *,
    importance: str = "l1",
    round_to: int = 1,
    targets: Sequence[str] | str | None = None,
    ignore: Sequence[str] | str | None = None,
    data: Iterable[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Metric vs ratio for each prunable group ("channel") or layer ("magnitude"); `model` is untouched.

    Returns `{"method", "ratios", "baseline", "macs", "params", "round_to", "entries": [{"name",
    "size", "metric": [...], "macs": [...], "params": [...]}], "layers": cost model}`.
    """
    ratios = [float(r) for r in ratios]
    for r in ratios:
        ChannelConfig(ratio=r)  # validates [0, 1)
    if method not in ("channel", "magnitude"):
        raise ConfigError(f"layer_sensitivity: method must be 'channel' or 'magnitude', got {method!r}")
    base = copy.deepcopy(model)
    split_attention(base)  # group names as prune_channels will see them
    inputs = example_tuple(base, example_inputs)
    table: dict[str, Any] = {
        "method": method, "ratios": ratios, "baseline": float(eval_fn(copy.deepcopy(base))),
        "macs": count_macs(base, inputs), "params": count_params(base), "round_to": round_to, "entries": [],
    }
    ctx = PruneContext(inputs, targets, ignore, data)
    if method == "channel":
        groups = eligible_groups(base, dependency_groups(base, inputs), ctx)
        scores = group_scores(base, groups, importance, data=data)
        table["layers"] = layer_costs(base, inputs, groups)
        for g in groups:
            order = torch.argsort(-scores[g.root], stable=True)
            entry: dict[str, Any] = {"name": g.root, "size": g.size, "metric": [], "macs": [], "params": []}
            for r in ratios:
                k = keep_count(g.size, r, round_to, g.root)
                pruned = copy.deepcopy(base)
                apply_channel_pruning(pruned, groups, {g.root: sorted(order[:k].tolist())})
                _measure(entry, pruned, eval_fn, inputs)
            table["entries"].append(entry)
    else:
        layers = select_layers(base, targets, ignore, maskable_kinds(), "sensitivity")
        for name, m in layers.items():
            entry = {"name": name, "size": m.weight.numel(), "metric": [], "macs": [], "params": []}
            for r in ratios:
                pruned = copy.deepcopy(base)
                layer = pruned.get_submodule(name)
                mask = masks_from_scores(magnitude_scores({name: layer}), r, "layer")[name]
                with torch.no_grad():
                    layer.weight.mul_(mask)
                _measure(entry, pruned, eval_fn, inputs)
            table["entries"].append(entry)
    return table


def _measure(entry: dict[str, Any], model: nn.Module, eval_fn: Callable[[nn.Module], float], inputs: tuple) -> None:
    entry["metric"].append(float(eval_fn(model)))
    entry["macs"].append(count_macs(model, inputs))
    entry["params"].append(count_params(model))


def estimate_cost(sensitivity: dict[str, Any], ratios: dict[str, float], budget: str = "macs") -> int:
    """MACs or parameters after applying per-group `ratios` (channel) or per-layer ratios (magnitude)."""
    if sensitivity["method"] == "magnitude":
        sizes = {e["name"]: e["size"] for e in sensitivity["entries"]}
        if budget == "macs":
            return sensitivity["macs"]  # zeros are not removed: dense MACs are unchanged
        return sensitivity["params"] - sum(round(ratios.get(n, 0.0) * s) for n, s in sizes.items())
    sizes = {e["name"]: e["size"] for e in sensitivity["entries"]}
    rt = sensitivity["round_to"]
    frac = {n: keep_count(sizes[n], ratios.get(n, 0.0), rt, n) / sizes[n] for n in sizes}

    def kept(dim: int, parts: dict[str, int]) -> float:
        return (dim - sum(c * (1.0 - frac.get(g, 1.0)) for g, c in parts.items())) / dim

    total = sensitivity["macs"] if budget == "macs" else sensitivity["params"]
    for layer in sensitivity["layers"].values():
        fo = kept(layer["out_dim"], layer["out"])
        fi = kept(layer["in_dim"], layer["in"]) if layer["scales_with_in"] else 1.0
        if budget == "macs":
            total -= layer["macs"] * (1.0 - fo * fi)
        else:
            total -= layer["weight"] * (1.0 - fo * fi) + layer["bias"] * (1.0 - fo)
    return int(round(total))


def allocate_ratios(sensitivity: dict[str, Any], global_target: float, budget: str = "macs") -> dict[str, float]:
    """Per-group (or per-layer) ratios removing at least `global_target` of the MACs / params.

    Each entry takes the largest tested ratio whose (monotonised) metric drop stays under a common
    tolerance; the smallest tolerance meeting the budget wins, so insensitive groups are pruned
    most. Feed the result to `ChannelConfig(ratios=..., round_to=<same as the analysis>)`.
    """
    if not 0.0 < global_target < 1.0:
        raise ConfigError(f"allocate_ratios: global_target must be in (0, 1), got {global_target}")
    if budget not in ("macs", "params"):
        raise ConfigError(f"allocate_ratios: budget must be 'macs' or 'params', got {budget!r}")
    if sensitivity["method"] == "magnitude" and budget == "macs":
        raise ConfigError("allocate_ratios: unstructured masks do not reduce dense MACs; use budget='params'")
    base = sensitivity["macs"] if budget == "macs" else sensitivity["params"]
    best = allocate_by_tolerance(sensitivity, lambda ratios: estimate_cost(sensitivity, ratios, budget),
                                 base * (1.0 - global_target))
    if best is None:
        most = 1.0 - estimate_cost(sensitivity, allocate_at(sensitivity, math.inf), budget) / base
        raise ConfigError(
            f"allocate_ratios: even the largest tested ratios remove only {most:.1%} of the {budget}, "
            f"short of the target {global_target:.1%}; test larger ratios"
        )
    return best


def _monotone_drops(sensitivity: dict[str, Any]) -> dict[str, list[float]]:
    """Per entry, the metric drop from the baseline at each ratio, made non-decreasing in the ratio."""
    drops: dict[str, list[float]] = {}
    for e in sensitivity["entries"]:
        worst, mono = 0.0, []
        for m in e["metric"]:
            worst = max(worst, sensitivity["baseline"] - m)
            mono.append(worst)
        drops[e["name"]] = mono
    return drops


def allocate_at(sensitivity: dict[str, Any], tolerance: float) -> dict[str, float]:
    """Per entry, the largest tested ratio whose (monotonised) metric drop is <= `tolerance`."""
    out = {}
    for name, mono in _monotone_drops(sensitivity).items():
        ok = [r for r, d in zip(sensitivity["ratios"], mono, strict=True) if d <= tolerance]
        out[name] = max(ok) if ok else 0.0
    return out


def allocate_by_tolerance(sensitivity: dict[str, Any], cost: Callable[[dict[str, float]], float],
                          goal: float) -> dict[str, float] | None:
    """The allocation at the smallest common metric-drop tolerance whose `cost(ratios)` is <= `goal`
    (None when no tested tolerance gets there). Shared by channel pruning and low-rank rank
    selection: the cost model is the caller's, the bisection over measured drops is this one."""
    tolerances = sorted({d for mono in _monotone_drops(sensitivity).values() for d in mono if math.isfinite(d)})
    best = None
    lo, hi = 0, len(tolerances) - 1
    while lo <= hi:  # the cost only falls as the tolerance grows: bisect for the smallest that fits
        mid = (lo + hi) // 2
        if cost(allocate_at(sensitivity, tolerances[mid])) <= goal:
            best, hi = tolerances[mid], mid - 1
        else:
            lo = mid + 1
    return None if best is None else allocate_at(sensitivity, best)
