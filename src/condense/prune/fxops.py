"""What the channel tracer understands: op tables, fx tracing with recorded shapes, node names.

`graph.py` walks the traced graph; this module says which modules / functions / methods keep
the channel dim as is (elementwise, spatial), reduce other dims, flatten, reshape or concatenate.
Anything not listed here is refused on the channel path (`PruneGraphError` naming the node).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from condense.core.errors import ConfigError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)
ELEMENTWISE = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.imul, torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, F.relu, F.relu6, F.leaky_relu, F.elu,
    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "neg", "abs", "exp", "relu",
    "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clamp_min", "contiguous", "clone",
    "detach", "float", "to", "type_as",
}
SPATIAL = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
}
REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
FLATTEN = {torch.flatten, "flatten"}
RESHAPE = {torch.reshape, "view", "reshape"}
CAT = {torch.cat, torch.concat, torch.concatenate}


class PruneGraphError(ConfigError):
    """The model's channel coupling cannot be resolved for structured pruning."""


def _shape_of(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


class ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once, keeping every node's output shape (not the values)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.nested: set[fx.Node] = set()

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        shape = _shape_of(out)
        if shape is not None:
            self.shapes[n] = shape
        elif _holds_tensor(out):
            self.nested.add(n)
        return out


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means we cannot see the graph
        raise PruneGraphError(
            f"structured pruning: torch.fx cannot trace {type(model).__name__} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "data-dependent control flow on tensors is not supported"
        ) from None


def record_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> ShapeRecorder:
    rec = ShapeRecorder(gm)
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            rec.run(*inputs)
    except Exception as e:  # noqa: BLE001
        raise PruneGraphError(f"structured pruning: the model fails on the example inputs ({type(e).__name__}: {e})") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    return rec


def describe(node: fx.Node, modules: dict[str, nn.Module] | None = None) -> str:
    """'node add (operator.add) in module features.0.0' style text for errors."""
    if node.op == "call_module":
        kind = f"module {node.target!r} ({type(modules[node.target]).__name__})" if modules else f"module {node.target!r}"
    elif node.op == "call_method":
        kind = f"method .{node.target}()"
    else:
        kind = f"function {getattr(node.target, '__module__', '') or ''}.{getattr(node.target, '__name__', node.target)}"
    stack = node.meta.get("nn_module_stack") or {}
    where = f" inside {list(stack)[-1]!r}" if stack and node.op != "call_module" else ""
    return f"node '{node.name}' ({kind}){where}"


def node_arg(node: fx.Node, pos: int, key: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(key, default)
