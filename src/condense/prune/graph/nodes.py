"""Reading `torch.export` graph nodes: op names, shapes, where a node sits in the model, the op
tables (pointwise, elementwise, reductions, pools, factories) and reshape run pairing."""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch


def module_fq(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def where_of(node: Any) -> str:
    mod = module_fq(node)
    op = str(node.target).replace("aten.", "").split(".")[0] if not isinstance(node.target, str) else node.target
    return f"{op} in {mod!r}" if mod else f"{op} at model level"


POINTWISE = {
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "relu6", "elu",
    "leaky_relu", "mish", "softplus", "dropout", "feature_dropout", "alpha_dropout", "native_dropout", "neg", "abs",
    "exp", "log", "sqrt", "rsqrt", "pow", "clone", "contiguous", "alias", "detach", "detach_", "to", "_to_copy",
    "type_as", "clamp", "clamp_min", "clamp_max", "softmax", "_softmax", "log_softmax", "_log_softmax", "sin", "cos",
    "erf", "reciprocal", "square", "lift_fresh_copy", "gelu_", "silu_", "hardswish_", "dropout_", "sign", "round",
    "floor", "ceil", "logical_not", "bitwise_not", "isnan", "nan_to_num", "identity", "hardsigmoid_", "sigmoid_",
    "tanh_", "celu", "selu", "glu_skip",
}
ELEMENTWISE = {
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum", "where", "eq", "ne", "lt", "le",
    "gt", "ge", "masked_fill", "masked_fill_", "rsub", "bitwise_and", "bitwise_or", "logical_and", "logical_or",
    "floor_divide", "remainder", "fmod", "atan2", "lerp", "addcmul", "copy_", "fill_",
}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "prod", "logsumexp", "norm", "linalg_vector_norm", "any", "all"}
POOL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "upsample_nearest3d", "_upsample_bilinear2d_aa",
    "upsample_bicubic2d", "max_pool2d_with_indices", "pad", "constant_pad_nd", "reflection_pad2d", "replicate_pad2d",
}
# ops whose output depends only on an input's shape / dtype (never on its channel values)
FACTORIES = {
    "arange", "zeros", "ones", "full", "empty", "scalar_tensor", "zeros_like", "ones_like", "full_like", "empty_like",
    "new_zeros", "new_ones", "new_full", "new_empty", "rand", "randn", "rand_like", "randn_like", "tensor",
    "_assert_tensor_metadata", "sym_size", "sym_numel", "sym_stride", "_assert_scalar", "sym_constrain_range_for_size",
    "linspace", "eye",
}
# reductions that stay exact when channels go (removed channels contribute 0 to a sum)
EXACT_REDUCE = {"sum"}
# statistics a norm broadcasts back (keepdim): accepted like a norm's statistics over fewer channels
NORM_STATS = {"mean", "var", "std", "norm", "linalg_vector_norm"}


def op_name(node: Any) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    name = getattr(t, "__name__", str(t))
    return name.split(".")[0]


def shape_of(node: Any) -> tuple[int, ...] | None:
    v = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(v, torch.Tensor):
        try:
            return tuple(int(d) for d in v.shape)
        except Exception:  # noqa: BLE001 - symbolic sizes: not a tensor we follow
            return None
    return None


def reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input dims with runs of output dims of equal product (reshape / view)."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj = [], []
        pa = pb = 1
        if i < len(a):
            gi.append(i)
            pa = a[i]
            i += 1
        if j < len(b):
            gj.append(j)
            pb = b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                return None
        # size-1 dims open the next run (a head axis of one head); at the very end they close this one
        if all(x == 1 for x in a[i:]) and all(x == 1 for x in b[j:]) and (i < len(a)) != (j < len(b)):
            gi += list(range(i, len(a)))
            gj += list(range(j, len(b)))
            i, j = len(a), len(b)
        out.append((gi, gj))
    return out


class TraceStop(Exception):
    pass

