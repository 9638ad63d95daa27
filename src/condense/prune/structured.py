"""Structured channel pruning and network slimming: score groups, choose kept channels, cut.

The pieces are separate: `graph.dependency_groups` (which channels are coupled),
`importance.group_scores` (which channels matter), `keep_count` / `choose_keep` (how many to
keep per group, rounded to `round_to`), `surgery.prune_and_record` (physically remove them and
log the edit). `prune(model, ChannelConfig(...))` runs them in that order.
"""
from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.core.select import select_modules
from condense.models.registry import model_spec
from condense.prune.config import PRUNERS, ChannelConfig, PruneContext, Pruner, SlimmingConfig
from condense.prune.graph import Group, dependency_groups, layer_kinds
from condense.prune.importance import group_scores
from condense.prune.mha import split_attention
from condense.prune.selection import select_layers
from condense.prune.surgery import prune_and_record


def example_tuple(model: nn.Module, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple; built from `model.condense_spec` (batch 1) when not given."""
    if example_inputs is None:
        spec = model_spec(model)
        kw = getattr(spec, "kwargs", {}) or {}
        if "in_features" in kw and kw["in_features"]:
            shape: list[int] = [1, int(kw["in_features"])]
        elif spec is not None:
            size = kw.get("image_size", 32)
            hw = [size, size] if isinstance(size, int) else list(size)
            shape = [1, int(kw.get("in_channels", 3)), *map(int, hw)]
        else:
            raise ConfigError("structured pruning needs example_inputs (a tensor shaped like one batch)")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return (torch.zeros(shape, device=device),)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, dict) and example_inputs and all(isinstance(x, torch.Tensor) for x in example_inputs.values()):
        return dict(example_inputs)  # type: ignore[return-value]  (a batch dict: keyword arguments)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise ConfigError(f"example_inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(example_inputs).__name__}")


def _names(model: nn.Module, patterns: Sequence[str] | str | None, field: str) -> set[str]:
    """Module names matched by `patterns`, widened to everything inside a matched container."""
    if not patterns:
        return set()
    hit = set(select_modules(model, patterns, field=field))
    return {n for n, _ in model.named_modules() if n and any(n == h or n.startswith(h + ".") for h in hit)}


def eligible_groups(model: nn.Module, groups: list[Group], ctx: PruneContext) -> list[Group]:
    """Prunable groups with a selected producer, none of whose output-side layers is ignored.

    `ignore` keeps a layer's output channels (and its BatchNorm's); its input channels still
    shrink when the layer feeding it is pruned.
    """
    selected = set(select_layers(model, ctx.targets, ctx.ignore, layer_kinds(), "channel pruning"))
    ignored = _names(model, ctx.ignore, "ignore")
    out = [
        g for g in groups
        if g.prunable and selected & set(g.producers) and not ignored & {m.module for m in g.members if m.role != "in"}
    ]
    if not out:
        fixed = "; ".join(f"{g.root}: {g.reason}" for g in groups if not g.prunable)
        raise ConfigError(
            f"channel pruning: no prunable channel group in the selection (not prunable: {fixed or 'none'}); "
            "an op the tracer cannot follow keeps its channels: choose other layers with targets=[...] / ignore=[...]"
        )
    return out


def group_ratios(model: nn.Module, groups: list[Group], cfg: ChannelConfig) -> dict[str, float | None]:
    """Per-group ratio overrides from `cfg.ratios` (None = use the default / global ratio)."""
    out: dict[str, float | None] = {g.root: None for g in groups}
    for pattern, ratio in (cfg.ratios or {}).items():
        names = _names(model, [pattern], f"ratios[{pattern!r}]")
        hit = [g.root for g in groups if names & set(g.producers)]
        if not hit:
            raise ConfigError(f"ratios: {pattern!r} matches no prunable channel group's layer")
        for root in hit:
            out[root] = ratio
    return out


def keep_count(size: int, ratio: float, round_to: int, root: str) -> int:
    """Channels kept: `size * (1 - ratio)` rounded to a multiple of `round_to` (never below it)."""
    keep = math.floor(size * (1.0 - ratio) + 0.5)
    if round_to > 1:
        if size <= round_to:
            return size
        keep = min(size, max(round_to, math.floor(keep / round_to + 0.5) * round_to))
    if keep <= 0:
        raise ConfigError(f"ratio {ratio} would remove every channel of {root!r} ({size} channels)")
    return keep


def _global_removals(groups: list[Group], scores: dict[str, torch.Tensor], ratio: float, max_group_ratio: float) -> dict[str, int]:
    """Remove the globally lowest normalised scores, at most `max_group_ratio` of any group."""
    pool = []
    for g in groups:
        s = scores[g.root] / (scores[g.root].mean() + 1e-12)
        pool += [(float(v), i, g.root) for i, v in enumerate(s.tolist())]
    budget = math.floor(ratio * len(pool) + 0.5)
    limit = {g.root: min(math.floor(g.size * max_group_ratio), g.size - 1) for g in groups}
    removed = {g.root: 0 for g in groups}
    for _, _, root in sorted(pool):
        if budget == 0:
            break
        if removed[root] < limit[root]:
            removed[root] += 1
            budget -= 1
    return removed


def choose_keep(model: nn.Module, groups: list[Group], scores: dict[str, torch.Tensor], cfg: ChannelConfig) -> dict[str, list[int]]:
    """`{root: sorted kept channel indices}` for every group (highest scores kept)."""
    overrides = group_ratios(model, groups, cfg)
    ratios: dict[str, float] = {}
    if cfg.scope == "global":
        pooled = [g for g in groups if overrides[g.root] is None]
        removed = _global_removals(pooled, scores, cfg.ratio, cfg.max_group_ratio) if pooled else {}
        sizes = {g.root: g.size for g in groups}
        ratios = {r: k / sizes[r] for r, k in removed.items()}
    keep: dict[str, list[int]] = {}
    for g in groups:
        ratio = overrides[g.root] if overrides[g.root] is not None else ratios.get(g.root, cfg.ratio)
        k = keep_count(g.size, ratio, cfg.round_to, g.root)
        order = torch.argsort(-scores[g.root], stable=True)
        keep[g.root] = sorted(order[:k].tolist())
    return keep


def check_arguments(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    """A forward that needs more (or other) inputs than the example gives: name the argument."""
    try:
        if isinstance(inputs, dict):
            inspect.signature(model.forward).bind(**inputs)
        else:
            inspect.signature(model.forward).bind(*inputs)
    except TypeError as e:
        raise ConfigError(
            f"structured pruning: {type(model).__name__}.forward cannot take the example inputs ({e}); "
            "pass example_inputs as a tuple with one tensor per argument"
        ) from None
    except ValueError:  # no signature (a C extension): let the forward speak for itself
        pass


def _outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    finally:
        for m, mode in was.items():
            m.training = mode
    return out


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shapes(v) for v in value]
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    return None


def prune_channels(model: nn.Module, cfg: ChannelConfig, ctx: PruneContext) -> nn.Module:
    """Structured pruning: remove the least important channels of every selected group."""
    split_attention(model)
    inputs = example_tuple(model, ctx.example_inputs)
    check_arguments(model, inputs)
    before = _shapes(_outputs(model, inputs))
    groups = eligible_groups(model, dependency_groups(model, inputs), ctx)
    if cfg.importance == "bn_gamma" and cfg.method == "slimming":
        modules = dict(model.named_modules())
        if not any(isinstance(modules[m.module], nn.modules.batchnorm._BatchNorm) for g in groups for m in g.members):
            raise ConfigError("slimming needs BatchNorm layers in the pruned groups; the selection has none")
    scores = group_scores(model, groups, cfg.importance, data=ctx.data, taylor_batches=cfg.taylor_batches, seed=cfg.seed)
    keep = choose_keep(model, groups, scores, cfg)
    cut_verified(model, groups, keep, inputs, before)
    return model


def _fails(model: nn.Module, inputs: Any, before: Any) -> str | None:
    """Why the cut model no longer runs on the example (None when it runs, same output shapes)."""
    try:
        after = _shapes(_outputs(model, inputs))
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward code is the answer
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None if after == before else f"the output shape changed {before} -> {after}"


def _cut_copy(model: nn.Module, groups: list[Group], keep: dict[str, list[int]], inputs: Any, before: Any) -> tuple[nn.Module, str | None]:
    trial = copy.deepcopy(model)
    try:
        prune_and_record(trial, groups, keep, inputs)
    except (ConfigError, RunError):
        raise
    except Exception as e:  # noqa: BLE001
        return trial, f"{type(e).__name__}: {e}"
    return trial, _fails(trial, inputs, before)


def cut_verified(model: nn.Module, groups: list[Group], keep: dict[str, list[int]], inputs: Any, before: Any) -> None:
    """Cut a copy, run it on the example, and only then take it over in place.

    The graph shows shapes as constants: forward code that rebuilds a shape from another tensor
    (timm's attention reshapes its output to the *input* width) can break after a correct cut.
    Such groups are found one by one, kept whole with a warning naming them and the error, and
    the rest is cut. `model` is untouched when nothing can be cut."""
    trial, why = _cut_copy(model, groups, keep, inputs, before)
    if why is not None:
        broken: dict[str, str] = {}
        for root in keep:
            _, w = _cut_copy(model, groups, {root: keep[root]}, inputs, before)
            if w is not None:
                broken[root] = w
        rest = {r: k for r, k in keep.items() if r not in broken}
        listing = "; ".join(f"{r}: {w}" for r, w in broken.items()) or why
        if not rest or not broken:
            raise ConfigError(
                f"channel pruning: the model's forward fails after the cut ({listing}); its code rebuilds a shape "
                "the cut changed: keep those layers with ignore=[...]"
            )
        warnings.warn(f"channel pruning kept {len(broken)} group(s) whole: the model's forward fails when they are "
                      f"cut ({listing})", stacklevel=3)
        trial, why = _cut_copy(model, groups, rest, inputs, before)
        if why is not None:  # pragma: no cover - each part worked alone
            raise RunError(f"channel pruning: the cut groups fail together ({why}); please report this model")
    model.__dict__.clear()  # take the cut copy over in place (callers hold `model`)
    model.__dict__.update(trial.__dict__)


PRUNERS.register("channel", Pruner(ChannelConfig, prune_channels), help="structured channel pruning (physically smaller)")
PRUNERS.register("slimming", Pruner(SlimmingConfig, prune_channels), help="network slimming: channels by BatchNorm gamma")
