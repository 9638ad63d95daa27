"""Channel surgery: rebuild Conv / BatchNorm / Linear layers with only the kept channels.

New modules (same class and hyper-parameters, fewer channels, sliced weights and running stats,
`groups` shrunk with depthwise convs) replace the old ones, so parameters, MACs, bytes on disk
and latency really drop. All groups of one call are cut against the original channel numbering
in a single pass, so groups sharing a layer (a `cat` consumer) cannot shift each other's offsets.

The edit is recorded as `prune_channels` with plain data only:
`{"input_shapes": [[1, 3, 32, 32]], "groups": [{"root": "features.0.conv", "size": 32,
"keep": [0, 3, 4, ...]}, ...]}`. Replay re-discovers the groups on the freshly built model
(deterministic: architecture only, never weights or scores) and cuts the recorded indices.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.models.edits import EDITS, record_edit
from condense.prune.graph import CONVS, NORMS, Group, dependency_groups


def _param(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _new_conv(m: nn.Module, keep_out: torch.Tensor, keep_in: torch.Tensor | None) -> nn.Module:
    depthwise = m.groups > 1
    out_c = len(keep_out)
    in_c = out_c if depthwise else len(keep_in)
    new = type(m)(
        in_c, out_c, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
        groups=out_c if depthwise else 1, bias=m.bias is not None, padding_mode=m.padding_mode,
        device=m.weight.device, dtype=m.weight.dtype,
    )
    w = m.weight[keep_out]
    new.weight = _param(m.weight, w if depthwise else w[:, keep_in])
    if m.bias is not None:
        new.bias = _param(m.bias, m.bias[keep_out])
    return new


def _new_linear(m: nn.Linear, keep_out: torch.Tensor, keep_in: torch.Tensor) -> nn.Linear:
    new = type(m)(len(keep_in), len(keep_out), bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    new.weight = _param(m.weight, m.weight[keep_out][:, keep_in])
    if m.bias is not None:
        new.bias = _param(m.bias, m.bias[keep_out])
    return new


def _new_norm(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(m)(
        len(keep), eps=m.eps, momentum=m.momentum, affine=m.affine,
        track_running_stats=m.track_running_stats,
        device=m.weight.device if m.affine else None, dtype=m.weight.dtype if m.affine else None,
    )
    if m.affine:
        new.weight = _param(m.weight, m.weight[keep])
        new.bias = _param(m.bias, m.bias[keep])
    if m.track_running_stats and m.running_mean is not None:
        new.running_mean = m.running_mean[keep].clone()
        new.running_var = m.running_var[keep].clone()
        new.num_batches_tracked = m.num_batches_tracked.clone()
    return new


def _dim(m: nn.Module, which: str) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features if which == "in" else m.out_features
    if isinstance(m, NORMS):
        return m.num_features
    return m.in_channels if which == "in" else m.out_channels


def apply_channel_pruning(model: nn.Module, groups: Sequence[Group], keep: dict[str, Sequence[int]]) -> None:
    """Remove every channel not in `keep[group.root]` from the groups named in `keep`.

    The index bookkeeping is on the CPU whatever the model's device, so `load()` can replay this
    on a model built on the meta device (shapes only, see `condense.artifacts`)."""
    modules = dict(model.named_modules())
    by_root = {g.root: g for g in groups}
    alive: dict[tuple[str, str], torch.Tensor] = {}
    for root, kept in keep.items():
        g = by_root.get(root)
        if g is None or not g.prunable:
            raise ConfigError(f"channel pruning: {root!r} is not the root of a prunable group")
        kept_t = torch.as_tensor(sorted(set(int(k) for k in kept)), dtype=torch.long, device="cpu")
        if len(kept_t) == 0 or kept_t.min() < 0 or kept_t.max() >= g.size:
            raise ConfigError(f"channel pruning: group {root!r} ({g.size} channels) gets invalid kept indices")
        removed = torch.ones(g.size, dtype=torch.bool, device="cpu")
        removed[kept_t] = False
        gone = removed.nonzero().flatten()
        for mem in g.members:
            which = "in" if mem.role == "in" else "out"
            key = (mem.module, which)
            if key not in alive:
                alive[key] = torch.ones(_dim(modules[mem.module], which), dtype=torch.bool, device="cpu")
            for j in range(mem.expand):
                alive[key][mem.offset + gone * mem.expand + j] = False
    touched = list(dict.fromkeys(name for name, _ in alive))
    for name in touched:
        m = modules[name]
        keep_out = alive.get((name, "out"), torch.ones(_dim(m, "out"), dtype=torch.bool, device="cpu")).nonzero().flatten()
        keep_in = alive.get((name, "in"), torch.ones(_dim(m, "in"), dtype=torch.bool, device="cpu")).nonzero().flatten()
        with torch.no_grad():
            if isinstance(m, nn.Linear):
                new = _new_linear(m, keep_out, keep_in)
            elif isinstance(m, NORMS):
                new = _new_norm(m, keep_out)
            elif isinstance(m, CONVS):
                new = _new_conv(m, keep_out, keep_in)
            else:  # pragma: no cover - graph.py only makes members of these types
                raise ConfigError(f"channel pruning: cannot resize {name!r} ({type(m).__name__})")
        new.train(m.training)
        model.set_submodule(name, new)


def input_shapes(example_inputs: tuple[torch.Tensor, ...]) -> list[list[int]]:
    return [[int(d) for d in x.shape] for x in example_inputs]


def prune_and_record(
    model: nn.Module, groups: Sequence[Group], keep: dict[str, list[int]], example_inputs: tuple[torch.Tensor, ...]
) -> None:
    """Cut the channels, then append the `prune_channels` edit (roots, sizes, kept indices)."""
    by_root = {g.root: g for g in groups}
    keep = {r: sorted(set(int(i) for i in k)) for r, k in keep.items() if len(set(k)) < by_root[r].size}
    if not keep:
        return
    apply_channel_pruning(model, groups, keep)
    record_edit(
        model, "prune_channels", input_shapes=input_shapes(example_inputs),
        groups=[{"root": r, "size": by_root[r].size, "keep": k} for r, k in keep.items()],
    )


def _replay(model: nn.Module, input_shapes: list[list[int]], groups: list[dict[str, Any]]) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tuple(torch.zeros(*s, device=device) for s in input_shapes)
    found = {g.root: g for g in dependency_groups(model, inputs)}
    for rec in groups:
        g = found.get(rec["root"])
        if g is None or g.size != rec["size"]:
            have = f"{g.size} channels" if g is not None else "no such group"
            raise ConfigError(
                f"prune_channels replay: group {rec['root']!r} should have {rec['size']} channels, the model has {have} "
                "(is this the architecture the edit was recorded on?)"
            )
    apply_channel_pruning(model, list(found.values()), {r["root"]: r["keep"] for r in groups})


EDITS.register("prune_channels", _replay)
