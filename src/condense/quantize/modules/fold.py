"""BatchNorm folding and the call trace that finds what to fold and which activations to fuse.

Integer inference has no BatchNorm: at deployment `y = gamma * (Wx + b - mean) / sqrt(var + eps)
+ beta` is folded into the preceding layer, `W' = W * gamma / sqrt(var + eps)` per output channel
and `b' = (b - mean) * gamma / sqrt(var + eps) + beta` (Jacob et al. 2018 sec. 3.2; Nagel et al.
2021 sec. 2.3.1). Quantization must see the folded weights, so PTQ folds first.

Which BatchNorm follows which layer is read from one traced forward pass (forward hooks on leaf
modules), not from module order: a BatchNorm is folded into a Conv / Linear only when it consumed
that layer's output tensor unchanged, and both ran exactly once. The same trace finds a ReLU that
directly consumes a layer's output (so a quantized layer can absorb it) and the execution order.
Limitation: functional ops (`F.relu`, `x + y`) are invisible to module hooks; a layer output that
is *also* read by a functional op elsewhere cannot be detected (rare in CNNs).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.models.edits import EDITS, record_edit

FOLDABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclasses.dataclass
class Call:
    """One leaf-module call seen by `trace_calls`."""

    name: str
    module: nn.Module
    inp: Tensor | None
    inp_version: int
    out: Tensor | None = None
    out_version: int = -1


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


@torch.no_grad()
def trace_calls(
    model: nn.Module, x: Tensor, leaf_types: tuple[type[nn.Module], ...] = ()
) -> tuple[list[Call], Any]:
    """Run `model(x)` once; return every leaf-module call (plus `leaf_types`) in order, and the output.

    Tensors are kept referenced in the result so that object identity is meaningful; a tensor's
    `_version` tells whether it was modified in place between producer and consumer.
    """
    calls: list[Call] = []
    handles = []

    def pre(name: str):
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            t = _first_tensor(args)
            calls.append(Call(name, mod, t, t._version if t is not None else -1))

        return hook

    def post(name: str):
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            for c in reversed(calls):
                if c.name == name and c.out is None:
                    t = _first_tensor(out)
                    c.out, c.out_version = t, (t._version if t is not None else -1)
                    break

        return hook

    for name, m in model.named_modules():
        if name and (not any(True for _ in m.children()) or isinstance(m, leaf_types)):
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name)))
    try:
        output = model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, output


def consumers(calls: list[Call], producer: Call) -> list[Call]:
    """Calls that read `producer`'s output object, unmodified, following pass-through calls.

    A call whose output *is* its input, unchanged (Identity, eval-mode Dropout), is transparent:
    its readers count as readers of the producer's output.
    """
    t = producer.out
    if t is None:
        return []
    found = []
    for c in calls:
        if c is producer or c.inp is not t or c.inp_version != producer.out_version:
            continue
        if c.out is t and c.out_version == producer.out_version:
            continue  # pass-through (Identity): same object, untouched
        found.append(c)
    return found


def call_counts(calls: list[Call]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    return counts


def find_bn_pairs(calls: list[Call]) -> list[tuple[str, str]]:
    """(layer name, batchnorm name) pairs where the BN reads the layer's output, each run once."""
    counts = call_counts(calls)
    pairs = []
    for c in calls:
        if not isinstance(c.module, FOLDABLE_LAYERS) or counts[c.name] != 1:
            continue
        readers = consumers(calls, c)
        if len(readers) != 1:
            continue
        bn = readers[0]
        if (
            isinstance(bn.module, BATCHNORMS)
            and counts[bn.name] == 1
            and bn.module.track_running_stats
            and bn.module.running_mean is not None
            and bn.module.num_features == c.module.weight.shape[0]
        ):
            pairs.append((c.name, bn.name))
    return pairs


def _ensure_bias(layer: nn.Module) -> None:
    if layer.bias is None:
        w = layer.weight
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))




@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold `bn`'s eval-mode affine transform into `layer`'s weight and bias (in place)."""
    w = layer.weight
    inv_std = torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    b = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(factor)
    new_w = w.to(torch.float64) * factor.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = (b - bn.running_mean.to(torch.float64)) * factor + beta
    _ensure_bias(layer)
    layer.weight.copy_(new_w.to(w.dtype))
    layer.bias.copy_(new_b.to(w.dtype))


def fold_batchnorm(model: nn.Module, example: Tensor, *, record: bool = True) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a Conv1d / Conv2d / Linear, in place.

    The BatchNorm is replaced by `nn.Identity` and the layer gains a bias. Returns the folded
    (layer, batchnorm) name pairs; with `record` the "fold_bn" edit is logged so `load()` can
    rebuild the folded structure before loading weights. The model must be in eval mode.
    """
    if model.training:
        raise ConfigError("fold_batchnorm: put the model in eval mode first (folding uses running statistics)")
    pairs = find_bn_pairs(trace_calls(model, example)[0])
    for layer_name, bn_name in pairs:
        fold_bn_into(model.get_submodule(layer_name), model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
    if record and pairs:
        record_edit(model, "fold_bn", pairs=[list(p) for p in pairs])
    return pairs


def _replay_fold_bn(model: nn.Module, pairs: list[list[str]]) -> None:
    for layer_name, bn_name in pairs:
        _ensure_bias(model.get_submodule(layer_name))
        model.set_submodule(bn_name, nn.Identity())


EDITS.register("fold_bn", _replay_fold_bn)
