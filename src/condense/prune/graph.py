"""Channel dependency groups for structured pruning, found on the `torch.export` graph.

The model is exported once (`torch.export.export(..., strict=False)`, the ATen graph with its
parameters as inputs), which works on Hugging Face, timm and torchvision models that `torch.fx`
cannot trace. Every *dimension* of every tensor carries a descriptor:

* `None`: untracked (comes from the data, e.g. batch, tokens, pixels): never pruned;
* `Segs`: a list of `(space, width)` segments: positions of this dim belong, in blocks, to the
  channels of a *space*. Every dim of every parameter and buffer starts as its own space, so
  `linear`, `conv`, `embedding`, norms, `cls_token` / `pos_embed` and LayerScale all work by the
  same rules: an op that lines two dims up ties their spaces (union-find);
* `Split`: a dim made by a reshape that split one tracked dim into several (`(..., H*d) ->
  (..., H, d)`). It stays lazy: tying the outer dim (attention heads meeting in
  `scaled_dot_product_attention` or a batched matmul) *coarsens* the space to whole heads; a
  `select` / `unbind` on it (fused qkv) *refines* the space into its parts; the inner dim is
  positions inside a unit, free to be sliced (rotary embeddings) or contracted (q . k).

A class of tied spaces is one dependency *group*: removing unit i removes its positions from every
member parameter dim. A group is prunable when a layer produces it (the output rows of a Linear /
Conv / Conv1D, an embedding's columns) and nothing froze it. What an op cannot map freezes the
groups it touches, with the op and module named in the group's `reason` (never pruned silently
wrong): grouped convolutions remove whole groups, `GroupNorm` whole norm groups, grouped-query
attention whole key/value groups, and `nn.MultiheadAttention` (its forward checks widths against
its own attributes) freezes its projections. Groups reaching the model output are never pruned.
Discovery only depends on the architecture and input shapes (edit-log replay relies on that).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def layer_kinds() -> tuple[type[nn.Module], ...]:
    """Layer types that produce prunable channels: Conv, Linear, and transformers' Conv1D (GPT-2)."""
    kinds: tuple[type[nn.Module], ...] = (*CONVS, nn.Linear, nn.Embedding)
    import sys

    pu = sys.modules.get("transformers.pytorch_utils")
    if pu is not None and hasattr(pu, "Conv1D"):
        kinds += (pu.Conv1D,)
    return kinds


class PruneGraphError(ConfigError):
    """The model's channel coupling cannot be resolved for structured pruning."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One parameter dim's share of a group. Unit c of the group covers positions
    `offset + c*expand ... offset + c*expand + expand - 1` of dim `dim` of parameter `param`.
    `role`: "out" (a layer's output rows / an embedding's columns), "in" (a consumer's input
    columns) or "chan" (per-channel values: biases, norms, running stats, tokens)."""

    module: str
    role: str
    offset: int = 0
    expand: int = 1
    param: str = ""
    dim: int = 0


@dataclasses.dataclass
class Group:
    """Channels (units) that must be removed together. `root` names the first producer layer."""

    root: str
    size: int
    members: list[Member]
    prunable: bool
    reason: str = ""
    heads: list[str] = dataclasses.field(default_factory=list)  # modules whose attention heads this group counts

    @property
    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members if m.role == "out"))

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members))


# -- descriptors -----------------------------------------------------------------------------------
Seg = tuple[int, int]  # (space, width in positions)


@dataclasses.dataclass(frozen=True)
class Segs:
    segs: tuple[Seg, ...]


@dataclasses.dataclass(frozen=True)
class Split:
    space: int
    sizes: tuple[int, ...]
    idx: int


@dataclasses.dataclass(frozen=True)
class Fold:
    """A data dim folded over a tracked one (`(B, H, ...) -> (B*H, ...)`, attention written as
    batched matmuls): position b*width + i is unit i's position of `inner`, for every b < outer."""

    inner: Any
    outer: int


Desc = Segs | Split | Fold | None


def _inner(d: Any) -> bool:
    """Positions inside a unit (a head's own dims): free to slice, contract or reduce."""
    return isinstance(d, Split) and d.idx > 0


def _outerish(d: Any) -> bool:
    """A lazy split's outer dim (the heads): tying it coarsens the space into whole units."""
    return isinstance(d, Split) and d.idx == 0


class _Spaces:
    """Union-find over spaces. A live space has `n` units; a refined space has `children`.
    Member records `(param, dim, offset, width)` live on spaces; classes hold spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.n: list[int] = []
        self.children: list[list[int] | None] = []
        self.records: list[list[tuple[str, int, int, int]]] = []
        self.fixed: dict[int, list[str]] = {}
        self.spaces: dict[int, list[int]] = {}
        self.heads: dict[int, list[str]] = {}
        self.share: dict[int, int] = {}  # a refined part's unit count when it was made

    def new(self, n: int, fixed: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.n.append(n)
        self.children.append(None)
        self.records.append([])
        self.spaces[i] = [i]
        self.fixed[i] = [fixed] if fixed else []
        self.heads[i] = []
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def size(self, s: int) -> int:
        return self.n[self.find(s)]

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.n[ra] != self.n[rb]:
            return False
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        self.spaces[ra] += self.spaces.pop(rb)
        self.fixed[ra] += self.fixed.pop(rb)
        self.heads[ra] += self.heads.pop(rb)
        return True

    def fix(self, s: int, reason: str) -> None:
        r = self.find(s)
        if reason not in self.fixed[r]:
            self.fixed[r].append(reason)

    def coarsen(self, s: int, units: int) -> bool:
        """Group the class's channels into `units` consecutive blocks (whole heads / groups)."""
        r = self.find(s)
        if units <= 0 or self.n[r] % units:
            return False
        for t in self.spaces[r]:
            self.n[t] = units
        return True

    def refine(self, s: int, sizes: Sequence[int]) -> list[int]:
        """Split the class of `s` into consecutive parts of `sizes` units; returns the part of `s`
        for each size (the same parts of every other space in the class are tied to them)."""
        r = self.find(s)
        assert sum(sizes) == self.n[r]
        if len(sizes) == 1:
            return [s]
        parts: dict[int, list[int]] = {}
        total = self.n[r]
        for t in list(self.spaces[r]):
            kids = []
            start = 0
            for k in sizes:
                c = self.new(k)
                self.share[c] = k
                kids.append(c)
                for param, dim, off, width in self.records[t]:
                    unit = width // total
                    self.records[c].append((param, dim, off + start * unit, k * unit))
                start += k
            self.children[t] = kids
            self.records[t] = []
            parts[t] = kids
        reasons, heads = self.fixed[r], self.heads[r]
        for i in range(len(sizes)):
            first = parts[self.spaces[r][0]][i]
            for t in self.spaces[r][1:]:
                self.union(first, parts[t][i])
            self.fixed[self.find(first)] += reasons
            self.heads[self.find(first)] += heads
        return parts[s]

    def live(self, seg: Seg) -> list[Seg]:
        """Resolve a segment through later refinements into live spaces."""
        s, w = seg
        kids = self.children[s]
        if kids is None:
            return [(s, w)]
        total = sum(self.share[k] for k in kids)
        out: list[Seg] = []
        for k in kids:
            out += self.live((k, w * self.share[k] // total))
        return out


def _fq(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _where(node: Any) -> str:
    mod = _fq(node)
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


def _opname(node: Any) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    name = getattr(t, "__name__", str(t))
    return name.split(".")[0]


def _shape(node: Any) -> tuple[int, ...] | None:
    v = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(v, torch.Tensor):
        try:
            return tuple(int(d) for d in v.shape)
        except Exception:  # noqa: BLE001 - symbolic sizes: not a tensor we follow
            return None
    return None


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
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


class _Builder:
    def __init__(self, model: nn.Module, ep: Any) -> None:
        self.model = model
        self.ep = ep
        sig = ep.graph_signature
        self.params: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.sp = _Spaces()
        self.desc: dict[Any, Any] = {}
        self.param_dims: dict[tuple[str, int], int] = {}
        self.roles: dict[tuple[str, int], str] = {}
        self.order: list[tuple[str, int]] = []
        self.mha = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}

    # -- descriptor helpers -------------------------------------------------------------------
    def segs(self, d: Desc) -> list[Seg]:
        assert isinstance(d, Segs)
        out: list[Seg] = []
        for seg in d.segs:
            out += self.sp.live(seg)
        return out

    def spaces_of(self, d: Desc) -> list[int]:
        if isinstance(d, Fold):
            return self.spaces_of(d.inner)
        if isinstance(d, Segs):
            return [s for s, _ in self.segs(d)]
        if isinstance(d, Split):
            return [s for s, _ in self.sp.live((d.space, math.prod(d.sizes)))]
        return []

    def width(self, d: Desc) -> int | None:
        if isinstance(d, Split):
            return d.sizes[d.idx]
        if isinstance(d, Segs):
            return sum(w for _, w in d.segs)
        if isinstance(d, Fold):
            w = self.width(d.inner)
            return None if w is None else w * d.outer
        return None

    def freeze(self, d: Desc, why: str) -> None:
        for s in self.spaces_of(d):
            self.sp.fix(s, why)

    def freeze_all(self, node: Any, why: str | None = None) -> None:
        why = why or f"{_where(node)} is not followed by the channel tracer"
        for a in node.all_input_nodes:
            for d in self.desc.get(a) or ():
                if isinstance(d, list | tuple):  # a tuple output: a list of per-tensor dims
                    continue
                self.freeze(d, why)
            tup = self.desc.get(a)
            if isinstance(tup, tuple) and tup and isinstance(tup[0], list):
                for dims in tup:
                    for d in dims or ():
                        self.freeze(d, why)

    def outer(self, d: Desc, why: str) -> Desc:
        """A lazy split's outer dim becomes a plain segment (coarsening its space to whole units)."""
        if isinstance(d, Split):
            if d.idx == 0 and self.sp.coarsen(d.space, d.sizes[d.idx]):
                return Segs(((d.space, d.sizes[d.idx]),))
            if d.idx == 0:
                self.freeze(d, why)
                return None
        return d

    def tie(self, a: Desc, b: Desc, size_a: int, size_b: int, why: str) -> Desc:
        """Two dims lined up by an op (elementwise, batch dims, contraction). Returns the result."""
        if size_a == 1 or size_b == 1:  # broadcast (or a single unit, which never goes)
            if size_a == size_b and a is not None and b is not None:
                self.unify(self.outer(a, why), self.outer(b, why))
            return b if size_a == 1 and (size_b != 1 or a is None) else a
        if isinstance(a, Fold) and a.outer == 1 and not isinstance(b, Fold):
            a = a.inner
        if isinstance(b, Fold) and b.outer == 1 and not isinstance(a, Fold):
            b = b.inner
        if isinstance(a, Fold) or isinstance(b, Fold):
            if isinstance(a, Fold) and isinstance(b, Fold) and a.outer == b.outer:
                w = size_a // a.outer
                return Fold(self.tie(a.inner, b.inner, w, w, why), a.outer)
            self.freeze(a, why)
            self.freeze(b, why)
            return a if isinstance(a, Fold) else b
        a, b = self.outer(a, why), self.outer(b, why)
        inner_a, inner_b = _inner(a), _inner(b)
        if inner_a or inner_b:  # positions inside a unit: free as long as whole units go
            if isinstance(a, Segs):
                self.freeze(a, why)
            if isinstance(b, Segs):
                self.freeze(b, why)
            return a if inner_a else b
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.freeze(a or b, why)
            return a or b
        if not self.unify(a, b):
            self.freeze(a, why)
            self.freeze(b, why)
        return a

    def unify(self, a: Desc, b: Desc, ratio: int = 1) -> bool:
        """Tie two segment lists position by position, refining / coarsening spaces as needed."""
        sa, sb = self.segs(a), self.segs(b)
        if sum(w for _, w in sa) * ratio != sum(w for _, w in sb) * 1 and ratio == 1:
            return False
        # refine both lists to common boundaries
        cuts = sorted({c for lst in (sa, sb) for c in self._cuts(lst)})
        for lst_d in (a, b):
            if not self._cut(lst_d, cuts):
                return False
        sa, sb = self.segs(a), self.segs(b)
        if len(sa) != len(sb):
            return False
        for (s1, w1), (s2, w2) in zip(sa, sb, strict=True):
            if w1 != w2:
                return False
            n1, n2 = self.sp.size(s1), self.sp.size(s2)
            if n1 != n2:
                small, big = (s1, s2) if n1 < n2 else (s2, s1)
                if not self.sp.coarsen(big, self.sp.size(small)):
                    return False
            if not self.sp.union(s1, s2):
                return False
        return True

    def _cuts(self, segs: list[Seg]) -> list[int]:
        out, pos = [], 0
        for _, w in segs:
            pos += w
            out.append(pos)
        return out

    def _cut(self, d: Desc, cuts: list[int]) -> bool:
        """Refine the spaces of `d` so that every position in `cuts` is a segment boundary."""
        pos = 0
        for s, w in self.segs(d):
            inside = [c - pos for c in cuts if pos < c < pos + w]
            if inside:
                n = self.sp.size(s)
                unit = w // n
                if any(c % unit for c in inside):
                    return False
                bounds = [0] + [c // unit for c in inside] + [n]
                self.sp.refine(s, [bounds[k + 1] - bounds[k] for k in range(len(bounds) - 1)])
            pos += w
        return True

    # -- parameters ------------------------------------------------------------------------------
    def param_desc(self, fqn: str, shape: tuple[int, ...]) -> list[Desc]:
        out: list[Desc] = []
        for dim, size in enumerate(shape):
            key = (fqn, dim)
            if key not in self.param_dims:
                s = self.sp.new(size)
                self.sp.records[s].append((fqn, dim, 0, size))
                self.param_dims[key] = s
            out.append(Segs(((self.param_dims[key], size),)))
        return out

    def role(self, node: Any, dim: int, role: str) -> None:
        fqn = self.params.get(node.name) if node is not None and hasattr(node, "name") else None
        if fqn is None:
            return
        key = (fqn, dim)
        if key not in self.roles or role == "out":
            if key not in self.roles:
                self.order.append(key)
            self.roles[key] = role if self.roles.get(key) != "out" else "out"

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> list[Group]:
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                fqn = self.params.get(node.name)
                if shape is None:
                    self.desc[node] = None
                elif fqn is not None:
                    self.desc[node] = self.param_desc(fqn, shape)
                else:
                    self.desc[node] = [None] * len(shape)
                continue
            if node.op == "output":
                for a in node.all_input_nodes:
                    for d in self.dims_of(a) or ():
                        self.freeze(d, "reaches the model output")
                continue
            if node.op != "call_function":
                continue
            try:
                out = self.visit(node)
            except _Stop as e:
                self.freeze_all(node, f"{_where(node)}: {e}")
                out = None
            self.desc[node] = self.checked(node, out)
        return self.groups()

    def dims_of(self, node: Any) -> list[Desc] | None:
        d = self.desc.get(node)
        return d if isinstance(d, list) else None

    def checked(self, node: Any, out: Any) -> Any:
        shape = _shape(node)
        if shape is None:
            if isinstance(out, tuple):
                return out
            val = node.meta.get("val")
            if out is not None:  # a handler answered for one tensor, the op returns several: lose nothing
                self.freeze_all(node, f"{_where(node)} returns several tensors")
                out = None
            if isinstance(val, list | tuple) and out is None:
                return tuple([None] * v.dim() if isinstance(v, torch.Tensor) else None for v in val)
            return None
        if out is None:
            return [None] * len(shape)
        if len(out) != len(shape):
            self.freeze_all(node, f"{_where(node)}: channel bookkeeping lost the rank")
            return [None] * len(shape)
        for i, d in enumerate(out):
            if _inner(d):
                continue  # positions inside a unit may be sliced (rotary halves)
            width = self.width(d)
            if width is not None and width != shape[i]:
                self.freeze(d, f"{_where(node)}: channel bookkeeping does not match the shape")
                out[i] = None
        return out

    def arg_dims(self, node: Any, i: int = 0) -> tuple[Any, list[Desc], tuple[int, ...]]:
        x = node.args[i]
        dims = self.dims_of(x) if hasattr(x, "op") else None
        shape = _shape(x) if hasattr(x, "op") else None
        if dims is None or shape is None:
            raise _Stop("an operand is not a tensor the tracer follows")
        return x, list(dims), shape

    def tracked(self, node: Any) -> bool:
        for a in node.all_input_nodes:
            d = self.desc.get(a)
            if isinstance(d, list) and any(x is not None for x in d):
                return True
            if isinstance(d, tuple) and any(isinstance(t, list) and any(x is not None for x in t) for t in d):
                return True
        return False

    def visit(self, node: Any) -> Any:
        op = _opname(node)
        if op == "getitem":
            src, idx = node.args
            d = self.desc.get(src)
            if isinstance(d, tuple) and isinstance(idx, int) and idx < len(d):
                return list(d[idx]) if d[idx] is not None else None
            return None
        if not self.tracked(node):
            return None
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            return handler(node)
        if op in POINTWISE:  # with a second tensor (pow(x, y), clamp(x, min=t)) it is elementwise
            return self.elementwise(node) if len(self.tensor_args(node)) > 1 else self.arg_dims(node)[1]
        if op in ELEMENTWISE:
            return self.elementwise(node)
        if op in REDUCE:
            return self.reduce(node)
        if op in POOL:
            return self.pool(node)
        if op in FACTORIES:
            return None
        raise _Stop("this operation is not known to preserve or map channels")

    def tensor_args(self, node: Any) -> list[Any]:
        return [a for a in list(node.args) + list(node.kwargs.values()) if hasattr(a, "op") and _shape(a) is not None]

    # elementwise & friends
    def elementwise(self, node: Any) -> list[Desc]:
        out_shape = _shape(node)
        if out_shape is None:
            raise _Stop("no tensor output")
        res: list[Desc] = [None] * len(out_shape)
        sizes = [1] * len(out_shape)
        first = [True] * len(out_shape)
        for a in self.tensor_args(node):
            dims, shape = self.dims_of(a), _shape(a)
            if dims is None:
                continue
            lead = len(out_shape) - len(shape)
            for k, (d, size) in enumerate(zip(dims, shape, strict=True)):
                i = k + lead
                if first[i]:
                    res[i], sizes[i], first[i] = d, size, False
                else:
                    res[i] = self.tie(res[i], d, sizes[i], size, f"{_where(node)} combines channels with other values")
                    sizes[i] = max(sizes[i], size)
        return res

    def reduce(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        k = 2 if _opname(node) in ("linalg_vector_norm", "norm") else 1  # norm(x, ord, dim, keepdim)
        rd = node.args[k] if len(node.args) > k else node.kwargs.get("dim")
        keep = node.args[k + 1] if len(node.args) > k + 1 else node.kwargs.get("keepdim", False)
        if rd is None or rd == []:
            rd = list(range(len(shape)))
        rd = [rd] if isinstance(rd, int) else list(rd)
        rd = {r % len(shape) for r in rd}
        op = _opname(node)
        out: list[Desc] = []
        for i, d in enumerate(dims):
            if i in rd:
                if _outerish(d) or isinstance(d, Fold):
                    self.freeze(d, f"{_where(node)} reduces over heads")
                elif isinstance(d, Segs) and op not in EXACT_REDUCE and not (op in NORM_STATS and keep):
                    # a max / prod / mean-as-a-feature over channels changes when channels go
                    self.freeze(d, f"{_where(node)} reduces over channels ({op})")
                if keep:
                    out.append(None)
            else:
                out.append(d)
        if isinstance(node.meta.get("val"), list | tuple):  # max / min over a dim: (values, indices)
            return (out, list(out))  # type: ignore[return-value]
        return out

    def pool(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        nspatial = {"1d": 1, "2d": 2, "3d": 3}.get(_opname(node)[-2:], len(shape) - 2)
        if _opname(node) in ("pad", "constant_pad_nd"):
            pads = list(node.args[1])  # (last dim's before, after, the one before it, ...)
            out = list(dims)
            for k in range(len(pads) // 2):
                i = len(dims) - 1 - k
                if pads[2 * k] or pads[2 * k + 1]:
                    self.freeze(dims[i], f"{_where(node)} pads a channel dim")
                    out[i] = None
            return out
        for d in dims[len(dims) - nspatial:]:
            self.freeze(d, f"{_where(node)} pools or pads over a channel dim")
        out = dims[: len(dims) - nspatial] + [None] * nspatial
        if _opname(node) == "max_pool2d_with_indices":
            return (out, list(out))  # type: ignore[return-value]
        return out

    # layers
    def op_linear(self, node: Any) -> list[Desc]:
        x, dims, shape = self.arg_dims(node)
        wn = node.args[1]
        bn = node.args[2] if len(node.args) > 2 else None
        w = self.dims_of(wn)
        if w is None or len(w) != 2:
            raise _Stop("a weight that is not a 2-d parameter")
        why = f"{_where(node)} (linear)"
        self.contract(dims[-1], w[1], shape[-1], why)
        self.role(wn, 0, "out")
        self.role(wn, 1, "in")
        out = dims[:-1] + [w[0]]
        if bn is not None:
            b = self.dims_of(bn)
            out[-1] = self.tie(out[-1], b[0] if b else None, _shape(wn)[0], _shape(bn)[0], why)
            self.role(bn, 0, "chan")
        if _fq(node) in self.mha or _fq(node).rsplit(".", 1)[0] in self.mha:
            for d in (w[0], w[1]):
                self.freeze(d, f"nn.MultiheadAttention {_fq(node)!r} checks its widths against its own attributes")
        return out

    def contract(self, a: Desc, b: Desc, size: int, why: str) -> None:
        self.tie(a, b, size, size, why)

    def op_addmm(self, node: Any) -> list[Desc]:
        bn, x, wn = node.args[:3]
        dims, shape = self.dims_of(x), _shape(x)
        w = self.dims_of(wn)
        if dims is None or w is None or len(dims) != 2 or len(w) != 2:
            raise _Stop("addmm on operands that are not matrices")
        why = f"{_where(node)} (addmm)"
        self.contract(dims[1], w[0], shape[1], why)
        self.role(wn, 1, "out")
        self.role(wn, 0, "in")
        out = [dims[0], w[1]]
        b = self.dims_of(bn) if hasattr(bn, "op") else None
        if b:
            out[1] = self.tie(out[1], b[-1], _shape(wn)[1], _shape(bn)[-1], why)
            self.role(bn, len(b) - 1, "chan")
        return out

    def op_matmul(self, node: Any) -> list[Desc]:
        a, da, sa = self.arg_dims(node, 0)
        b, db, sb = self.arg_dims(node, 1)
        if len(sa) < 2 or len(sb) < 2:
            raise _Stop("a matrix-vector product")
        why = f"{_where(node)} (matmul)"
        self.contract(da[-1], db[-2], sa[-1], why)
        self.role(b, len(sb) - 1, "out")
        self.role(b, len(sb) - 2, "in")
        ba, bb = da[:-2], db[:-2]
        n = max(len(ba), len(bb))
        ba = [None] * (n - len(ba)) + ba
        bb = [None] * (n - len(bb)) + bb
        za = [1] * (n - len(sa[:-2])) + list(sa[:-2])
        zb = [1] * (n - len(sb[:-2])) + list(sb[:-2])
        batch = [self.tie(x, y, p, q, why) for x, y, p, q in zip(ba, bb, za, zb, strict=True)]
        return batch + [da[-2], db[-1]]

    op_bmm = op_matmul
    op_mm = op_matmul

    def op_convolution(self, node: Any) -> list[Desc]:
        return self.op_conv2d(node, transposed=bool(node.args[6]), groups=node.args[8])

    def op_conv1d(self, node: Any) -> list[Desc]:
        return self.op_conv2d(node)

    def op_conv3d(self, node: Any) -> list[Desc]:
        return self.op_conv2d(node)

    def op_conv2d(self, node: Any, transposed: bool = False, groups: int | None = None) -> list[Desc]:
        x, dims, shape = self.arg_dims(node)
        wn = node.args[1]
        bn = node.args[2] if len(node.args) > 2 else None
        if groups is None:
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        w, wshape = self.dims_of(wn), _shape(wn)
        if w is None or wshape is None:
            raise _Stop("a convolution weight that is not a parameter")
        why = f"{_where(node)} (convolution)"
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        if transposed and groups != 1:
            raise _Stop("grouped transposed convolution")
        if groups == 1:
            self.contract(dims[1], w[in_dim], shape[1], why)
        else:
            c = self.outer(dims[1], why)
            wo = w[out_dim]
            ok = isinstance(c, Segs) and isinstance(wo, Segs) and len(self.segs(c)) == 1
            if ok:  # units of whole conv groups, as coarse as the input's existing units need
                (s_in, _), (s_out, _) = self.segs(c)[0], self.segs(wo)[0]
                m = math.gcd(self.sp.size(s_in), groups)
                ok = self.sp.coarsen(s_in, m) and self.sp.coarsen(s_out, m) and self.sp.union(s_in, s_out)
            if not ok:
                self.freeze(c, f"{why}: grouped convolution over mixed channels")
                self.freeze(wo, f"{why}: grouped convolution over mixed channels")
        for d in dims[2:]:  # a kernel sliding over channels mixes them
            self.freeze(d, f"{why} slides over channels")
        self.role(wn, out_dim, "out")
        self.role(wn, in_dim, "in")
        out = [dims[0], w[out_dim]] + [None] * (len(shape) - 2)
        if bn is not None and hasattr(bn, "op"):
            b = self.dims_of(bn)
            out[1] = self.tie(out[1], b[0] if b else None, wshape[out_dim], _shape(bn)[0], why)
            self.role(bn, 0, "chan")
        return out


    def per_channel(self, node: Any, x_dim: int, params: Sequence[Any], why: str) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        d = dims[x_dim]
        for p in params:
            if p is None or not hasattr(p, "op"):
                continue
            pd = self.dims_of(p)
            d = self.tie(d, pd[0] if pd else None, shape[x_dim], _shape(p)[0], why)
            self.role(p, 0, "chan")
        dims[x_dim] = d
        return dims

    def op_batch_norm(self, node: Any) -> list[Desc]:
        return self.per_channel(node, 1, node.args[1:5], f"{_where(node)} (batch norm)")

    def op__native_batch_norm_legit_no_training(self, node: Any) -> Any:
        dims = self.per_channel(node, 1, node.args[1:5], f"{_where(node)} (batch norm)")
        return (dims, None, None)

    def op_instance_norm(self, node: Any) -> list[Desc]:
        return self.per_channel(node, 1, node.args[1:5], f"{_where(node)} (instance norm)")

    def op_layer_norm(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        nshape = list(node.args[1])
        params = [node.args[i] if len(node.args) > i else None for i in (2, 3)]
        if len(nshape) != 1:
            for d in dims[len(dims) - len(nshape):]:
                self.freeze(d, f"{_where(node)} normalises over several dims")
            return dims
        if params[0] is None and dims[-1] is not None:
            self.freeze(dims[-1], f"{_where(node)}: a norm without a weight keeps its width in its attributes")
        return self.per_channel(node, len(dims) - 1, params, f"{_where(node)} (layer norm)")

    def op_rms_norm(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        if len(node.args[1]) != 1:
            for d in dims[-len(node.args[1]):]:
                self.freeze(d, f"{_where(node)} normalises over several dims")
            return dims
        w = node.args[2] if len(node.args) > 2 else None
        if w is None and dims[-1] is not None:
            self.freeze(dims[-1], f"{_where(node)}: a norm without a weight keeps its width in its attributes")
        return self.per_channel(node, len(dims) - 1, [w], f"{_where(node)} (rms norm)")

    def op_group_norm(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        groups = node.args[1]
        why = f"{_where(node)} (group norm)"
        c = self.outer(dims[1], why)
        if isinstance(c, Segs) and len(self.segs(c)) == 1:
            s0 = self.segs(c)[0][0]
            if not self.sp.coarsen(s0, math.gcd(self.sp.size(s0), groups)):
                self.freeze(c, why)
        elif c is not None:
            self.freeze(c, why)
        dims[1] = c
        for p in node.args[2:4]:
            if p is not None and hasattr(p, "op"):
                pd = self.dims_of(p)
                dims[1] = self.tie(dims[1], pd[0] if pd else None, shape[1], _shape(p)[0], why)
                self.role(p, 0, "chan")
        return dims

    def op_embedding(self, node: Any) -> list[Desc]:
        wn, idx = node.args[:2]
        w = self.dims_of(wn)
        idims = self.dims_of(idx) or []
        for d in idims:
            self.freeze(d, f"{_where(node)} indexes with channels")
        if w is None or len(w) != 2:
            raise _Stop("an embedding table that is not a 2-d parameter")
        self.freeze(w[0], f"{_where(node)}: rows are looked up by index")
        self.role(wn, 1, "out")
        return [None] * len(_shape(idx)) + [w[1]]

    def op_scaled_dot_product_attention(self, node: Any) -> list[Desc]:
        q, dq, sq = self.arg_dims(node, 0)
        k, dk, sk = self.arg_dims(node, 1)
        v, dv, sv = self.arg_dims(node, 2)
        why = f"{_where(node)} (attention)"
        self.contract(dq[-1], dk[-1], sq[-1], why)
        for d in (dk[-2], dv[-2]):  # the softmax runs over the key positions
            self.freeze(d, f"{why}: channels as key positions")
        for j in range(len(sq) - 2):
            dq[j] = self.heads_tie(dq[j], dk[j], sq[j], sk[j], why)
            dq[j] = self.heads_tie(dq[j], dv[j], sq[j], sv[j], why)
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        if mask is not None and hasattr(mask, "op") and self.dims_of(mask) is not None:
            dm, sm = self.dims_of(mask), _shape(mask)  # broadcast to (..., L, S): a per-head bias joins the heads
            lead = len(sq) - len(sm)
            for i, d in enumerate(dm):
                j = i + lead
                if j < 0 or j >= len(sq) - 2:
                    if isinstance(d, Segs):
                        self.freeze(d, f"{why}: a mask built from channels")
                    continue
                dq[j] = self.tie(dq[j], d, sq[j], sm[i], why)
        return dq[:-2] + [dq[-2], dv[-1]]

    def heads_tie(self, a: Desc, b: Desc, sa: int, sb: int, why: str) -> Desc:
        """Batch dims of attention; grouped-query attention has fewer key/value heads."""
        if sa == sb or sa == 1 or sb == 1:
            return self.tie(a, b, sa, sb, why)
        if sa % sb:
            self.freeze(a, why)
            self.freeze(b, why)
            return a
        a, b = self.outer(a, why), self.outer(b, why)
        if isinstance(a, Segs) and isinstance(b, Segs) and len(self.segs(a)) == 1 and len(self.segs(b)) == 1:
            (s1, _), (s2, _) = self.segs(a)[0], self.segs(b)[0]
            if self.sp.coarsen(s1, self.sp.size(s2)) and self.sp.union(s1, s2):
                return a
        self.freeze(a, why)
        self.freeze(b, why)
        return a

    # shape ops
    def op_t(self, node: Any) -> list[Desc]:
        return self.arg_dims(node)[1][::-1]

    def op_transpose(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        a, b = node.args[1] % len(dims), node.args[2] % len(dims)
        dims[a], dims[b] = dims[b], dims[a]
        return dims

    def op_permute(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        return [dims[p % len(dims)] for p in node.args[1]]

    def op_unsqueeze(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        d = node.args[1] % (len(dims) + 1)
        return dims[:d] + [None] + dims[d:]

    def op_squeeze(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        which = node.args[1] if len(node.args) > 1 else None
        which = range(len(dims)) if which is None else [which] if isinstance(which, int) else which
        which = {w % len(dims) for w in which}
        return [d for i, d in enumerate(dims) if not (i in which and shape[i] == 1)]

    def op_expand(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        out_shape = _shape(node)
        lead = len(out_shape) - len(dims)
        return [None] * lead + [d if shape[i] == out_shape[i + lead] else None for i, d in enumerate(dims)]

    op_expand_as = op_expand
    op_broadcast_to = op_expand

    def op_repeat(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        reps = list(node.args[1])
        lead = len(reps) - len(dims)
        out: list[Desc] = [None] * lead
        for i, d in enumerate(dims):
            if reps[i + lead] != 1:
                self.freeze(d, f"{_where(node)} tiles channels")
                out.append(None)
            else:
                out.append(d)
        return out

    def op_flatten(self, node: Any) -> list[Desc]:
        return self.reshape_to(node, _shape(node))

    def op_view(self, node: Any) -> list[Desc]:
        return self.reshape_to(node, _shape(node))

    op_reshape = op_view
    op__unsafe_view = op_view
    op_unflatten = op_view
    op_view_as = op_view
    op_reshape_as = op_view

    def reshape_to(self, node: Any, out_shape: tuple[int, ...] | None) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        if out_shape is None:
            raise _Stop("a reshape to a symbolic shape")
        groups = _reshape_groups(shape, out_shape)
        if groups is None:
            raise _Stop(f"a reshape {list(shape)} -> {list(out_shape)} the tracer cannot pair up")
        out: list[Desc] = [None] * len(out_shape)
        why = f"{_where(node)} reshapes {list(shape)} -> {list(out_shape)}"
        for gi, gj in groups:
            first = next((k for k, i in enumerate(gi) if dims[i] is not None), None)
            ins = [(dims[i], shape[i]) for k, i in enumerate(gi)
                   if shape[i] != 1 or dims[i] is not None or (first is not None and k < first)]
            outs = [j for j in gj if out_shape[j] != 1]
            if not ins or all(d is None for d, _ in ins):
                continue
            if outs and len(ins) == 1:  # (..., d) -> (..., 1, d): one head is still a head
                outs = [j for j in gj if j <= outs[-1]]
            if len(ins) == 1 and len(outs) == 1:
                out[outs[0]] = ins[0][0]
                continue
            merged = self.merge(ins, why)
            if merged is None:
                continue
            if len(outs) == 1:
                out[outs[0]] = merged
            elif len(outs) > 1:
                for k, d in enumerate(self.split(merged, [out_shape[j] for j in outs], why, _fq(node))):
                    out[outs[k]] = d
        return out

    def merge(self, ins: list[tuple[Desc, int]], why: str) -> Desc:
        """Several dims read as one (outer to inner)."""
        if len(ins) == 1:
            return ins[0][0]
        # a lazy split put back together
        d0 = ins[0][0]
        if (all(isinstance(d, Split) for d, _ in ins) and d0.idx + len(ins) == len(d0.sizes) and d0.idx == 0
                and all(d.space == d0.space and d.sizes == d0.sizes and d.idx == d0.idx + k for k, (d, _) in enumerate(ins))):
            return Segs(((d0.space, math.prod(d0.sizes)),))
        if all(d is None for d, _ in ins[:-1]) and ins[-1][0] is not None and not isinstance(ins[-1][0], Fold):
            last = ins[-1][0]
            if not _inner(last):
                return Fold(last, math.prod(sz for _, sz in ins[:-1]))
        head, rest = ins[0], ins[1:]
        d = self.outer(head[0], why)
        if isinstance(d, Segs):
            inner = math.prod(sz for _, sz in rest)
            spaces = {self.sp.find(s) for s in self.spaces_of(d)}
            ok = True
            for r, _ in rest:
                if isinstance(r, Segs) or (isinstance(r, Split) and not {self.sp.find(s) for s in self.spaces_of(r)} <= spaces):
                    ok = False
            if ok:
                return Segs(tuple((s, w * inner) for s, w in self.segs(d)))
        for r, _ in ins:
            self.freeze(r, why)
        return None

    def split(self, d: Desc, sizes: list[int], why: str, module: str = "") -> list[Desc]:
        if isinstance(d, Fold):  # unfold the data dims back out
            k, p = 0, 1
            while k < len(sizes) - 1 and (p < d.outer or (d.outer == 1 and sizes[k] == 1)):
                p *= sizes[k]
                k += 1
            if p == d.outer and k < len(sizes):
                rest = sizes[k:]
                return [None] * k + ([d.inner] if len(rest) == 1 else self.split(d.inner, rest, why, module))
        if isinstance(d, Segs):
            segs = self.segs(d)
            if len(segs) == 1:
                r = self.sp.find(segs[0][0])
                if module and module not in self.sp.heads[r]:
                    self.sp.heads[r].append(module)
                return [Split(segs[0][0], tuple(sizes), k) for k in range(len(sizes))]
        if _outerish(d) and math.prod(sizes) == d.sizes[d.idx]:
            d2 = self.outer(d, why)
            if isinstance(d2, Segs):
                return self.split(d2, sizes, why, module)
        self.freeze(d, why)
        return [None] * len(sizes)

    def op_select(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        dim, index = node.args[1] % len(dims), node.args[2]
        parts = self.pick(dims, shape, dim, f"{_where(node)} selects one channel")
        if parts is None:
            return dims[:dim] + dims[dim + 1:]
        return parts[index % len(parts)]

    def op_unbind(self, node: Any) -> Any:
        _, dims, shape = self.arg_dims(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(dims)
        parts = self.pick(dims, shape, dim, f"{_where(node)} unbinds channels")
        if parts is None:
            return tuple(dims[:dim] + dims[dim + 1:] for _ in range(shape[dim]))
        return tuple(parts)

    def pick(self, dims: list[Desc], shape: tuple[int, ...], dim: int, why: str) -> list[list[Desc]] | None:
        """The dims left after taking each index of a lazy split's outer dim (fused qkv)."""
        d = dims[dim]
        if d is None:
            return None
        if _outerish(d) and len(self.sp.live((d.space, math.prod(d.sizes)))) == 1:
            n, parts = self.sp.size(d.space), d.sizes[d.idx]
            if n % parts == 0:
                kids = self.sp.refine(d.space, [n // parts] * parts)
                out = []
                for kid in kids:
                    rest = []
                    for i, e in enumerate(dims):
                        if i == dim:
                            continue
                        if isinstance(e, Split) and e.space == d.space and e.sizes == d.sizes:
                            sizes = e.sizes[d.idx + 1:]
                            if e.idx < d.idx:
                                rest.append(None)
                            else:
                                rest.append(Segs(((kid, sizes[0]),)) if len(sizes) == 1 else Split(kid, sizes, e.idx - d.idx - 1))
                        else:
                            rest.append(e)
                    out.append(rest)
                return out
        self.freeze(d, why)
        return None

    def op_slice(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(dims)
        start = node.args[2] if len(node.args) > 2 else 0
        end = node.args[3] if len(node.args) > 3 else shape[dim]
        step = node.args[4] if len(node.args) > 4 else 1
        start = 0 if start is None else start
        end = shape[dim] if end is None or end > shape[dim] else end
        start, end = (start % shape[dim] if start < 0 else start), (end % shape[dim] if end < 0 else end)
        d = dims[dim]
        if d is None or (start == 0 and end == shape[dim] and step == 1):
            return dims
        if _inner(d):
            return dims  # inside a unit (rotary halves of a head)
        d = self.outer(d, f"{_where(node)} slices channels")
        if isinstance(d, Segs) and step == 1 and self._cut(d, [start, end]):
            pos, keep = 0, []
            for s, w in self.segs(d):
                if pos >= start and pos + w <= end:
                    keep.append((s, w))
                pos += w
            if sum(w for _, w in keep) == end - start:
                dims[dim] = Segs(tuple(keep))
                return dims
        self.freeze(d, f"{_where(node)} slices channels")
        dims[dim] = None
        return dims

    def op_split(self, node: Any) -> Any:
        _, dims, shape = self.arg_dims(node)
        size = node.args[1]
        dim = (node.args[2] if len(node.args) > 2 else 0) % len(dims)
        sizes = [size] * (shape[dim] // size) + ([shape[dim] % size] if shape[dim] % size else []) if isinstance(size, int) else list(size)
        return self.split_at(node, dims, dim, sizes)

    op_split_with_sizes = op_split

    def op_chunk(self, node: Any) -> Any:
        _, dims, shape = self.arg_dims(node)
        chunks = node.args[1]
        dim = (node.args[2] if len(node.args) > 2 else 0) % len(dims)
        step = -(-shape[dim] // chunks)
        sizes = [min(step, shape[dim] - k) for k in range(0, shape[dim], step)]
        return self.split_at(node, dims, dim, sizes)

    def split_at(self, node: Any, dims: list[Desc], dim: int, sizes: list[int]) -> Any:
        d = dims[dim]
        why = f"{_where(node)} splits channels"
        if isinstance(d, Split):
            d = self.outer(d, why) if _outerish(d) else d
        if isinstance(d, Split) or d is None:
            return tuple(dims[:dim] + [d] + dims[dim + 1:] for _ in sizes)
        cuts = list(itertools.accumulate(sizes[:-1]))
        if isinstance(d, Segs) and self._cut(d, cuts):
            out, pos, segs = [], 0, self.segs(d)
            for sz in sizes:
                part, p = [], 0
                for s, w in segs:
                    if p >= pos and p + w <= pos + sz:
                        part.append((s, w))
                    p += w
                out.append(dims[:dim] + [Segs(tuple(part)) if part else None] + dims[dim + 1:])
                pos += sz
            return tuple(out)
        self.freeze(d, why)
        return tuple(dims[:dim] + [None] + dims[dim + 1:] for _ in sizes)

    def op_cat(self, node: Any) -> list[Desc]:
        tensors = node.args[0]
        out_shape = _shape(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(out_shape)
        why = f"{_where(node)} concatenates"
        parts: list[tuple[list[Desc], tuple[int, ...]]] = []
        for t in tensors:
            dims, shape = self.dims_of(t), _shape(t)
            if dims is None or shape is None:
                raise _Stop("concatenates something that is not a tensor")
            if len(shape) != len(out_shape):
                continue  # legacy empty tensors
            parts.append((list(dims), shape))
        res = list(parts[0][0])
        for i in range(len(out_shape)):
            if i == dim:
                continue
            for dims, shape in parts[1:]:
                res[i] = self.tie(res[i], dims[i], parts[0][1][i], shape[i], why)
        segs: list[Seg] = []
        inner = False
        if all(dims[dim] is None for dims, _ in parts):
            res[dim] = None
            return res
        for dims, shape in parts:
            d = dims[dim]
            if _inner(d):
                inner = True
                continue
            d = self.outer(d, why)
            if d is None:
                segs.append((self.sp.new(shape[dim], why + " channels with other values"), shape[dim]))
            else:
                segs += self.segs(d)
        if inner:
            res[dim] = next(dims[dim] for dims, _ in parts if _inner(dims[dim]))
            for dims, _ in parts:
                if dims[dim] is not None and not _inner(dims[dim]):
                    self.freeze(dims[dim], why)
        else:
            res[dim] = Segs(tuple(segs))
        return res

    op_concat = op_cat

    def op_stack(self, node: Any) -> list[Desc]:
        tensors = node.args[0]
        out_shape = _shape(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(out_shape)
        first = self.dims_of(tensors[0])
        res = list(first)
        for t in tensors[1:]:
            dims = self.dims_of(t)
            for i in range(len(res)):
                res[i] = self.tie(res[i], dims[i], _shape(tensors[0])[i], _shape(t)[i], f"{_where(node)} stacks")
        return res[:dim] + [None] + res[dim:]

    def op_index(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        idx = node.args[1]
        used = [i for i, t in enumerate(idx) if t is not None]
        for i in used:
            self.freeze(dims[i], f"{_where(node)} indexes channels")
        for t in idx:
            if t is not None and hasattr(t, "op"):
                for d in self.dims_of(t) or ():
                    self.freeze(d, f"{_where(node)} indexes with channels")
        out_shape = _shape(node)
        rest = [d for i, d in enumerate(dims) if i not in used]
        if used == list(range(len(used))):
            return [None] * (len(out_shape) - len(rest)) + rest
        for d in rest:
            self.freeze(d, f"{_where(node)} indexes")
        return [None] * len(out_shape)

    def op_gather(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        dim = node.args[1] % len(dims)
        self.freeze(dims[dim], f"{_where(node)} gathers channels")
        idx = self.dims_of(node.args[2]) or []
        for d in idx:
            self.freeze(d, f"{_where(node)} gathers with channels")
        return [d if i != dim and (i >= len(idx) or idx[i] is None) else None for i, d in enumerate(dims)]

    def op_roll(self, node: Any) -> list[Desc]:
        """Shifts along some dims (Swin's shifted windows): those dims' channels would move."""
        _, dims, shape = self.arg_dims(node)
        which = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims", [])
        which = [which] if isinstance(which, int) else list(which)
        if not which:
            which = list(range(len(dims)))
        for w in which:
            if dims[w % len(dims)] is not None:
                self.freeze(dims[w % len(dims)], f"{_where(node)} rolls channels")
                dims[w % len(dims)] = None
        return dims

    def op_flip(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        for w in node.args[1]:
            if dims[w % len(dims)] is not None:
                self.freeze(dims[w % len(dims)], f"{_where(node)} flips channels")
                dims[w % len(dims)] = None
        return dims

    # -- result ----------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        by_class: dict[int, list[Member]] = {}
        rank = {key: i for i, key in enumerate(self.order)}
        for s in range(len(self.sp.parent)):
            if self.sp.children[s] is not None:
                continue
            r = self.sp.find(s)
            n = self.sp.n[r]
            for param, dim, off, width in self.sp.records[s]:
                role = self.roles.get((param, dim), "chan")
                module = param.rsplit(".", 1)[0] if "." in param else ""
                by_class.setdefault(r, []).append(Member(module, role, off, width // n, param, dim))
        out: list[Group] = []
        for r, members in by_class.items():
            members.sort(key=lambda m: (rank.get((m.param, m.dim), len(rank)), m.offset))
            producers = [m for m in members if m.role == "out"]
            if not producers:
                continue
            reasons = list(dict.fromkeys(self.sp.fixed[r]))
            out.append(Group(producers[0].module, self.sp.n[r], members, not reasons, "; ".join(reasons),
                             list(dict.fromkeys(self.sp.heads[r]))))
        out.sort(key=lambda g: rank.get((g.members[0].param, g.members[0].dim), 0) if g.members else 0)
        seen: dict[str, int] = {}
        for g in out:  # roots name groups in edit logs: make them unique, deterministically
            k = seen.get(g.root, 0)
            seen[g.root] = k + 1
            if k:
                g.root = f"{g.root}:{k}"
        return out


class _Stop(Exception):
    pass


def export_graph(model: nn.Module, example_inputs: tuple[Any, ...], example_kwargs: dict[str, Any] | None = None) -> Any:
    """`torch.export` the model in eval mode (training flags restored), or a PruneGraphError."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):  # a batch dict: the forward's keyword arguments
                example_inputs, example_kwargs = (), {**example_inputs, **(example_kwargs or {})}
            return torch.export.export(model, tuple(example_inputs), kwargs=example_kwargs or {}, strict=False)
    except TypeError as e:
        raise PruneGraphError(
            f"structured pruning: {type(model).__name__}.forward does not take the example inputs ({e}); "
            "pass example_inputs matching its arguments"
        ) from None
    except Exception as e:  # noqa: BLE001 - any export failure means we cannot see the graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PruneGraphError(
            f"structured pruning: torch.export cannot capture {type(model).__name__} on the example inputs "
            f"({type(e).__name__}: {first})"
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode


def dependency_groups(model: nn.Module, example_inputs: tuple[Any, ...]) -> list[Group]:
    """Export `model` and return its channel groups in graph order (prunable or not)."""
    for name, m in model.named_modules():
        if getattr(m, "parametrizations", None) is not None and "weight" in m.parametrizations:
            raise PruneGraphError(f"structured pruning: {name!r} has a weight parametrization (masks?); call make_permanent() first")
    ep = export_graph(model, example_inputs)
    return _Builder(model, ep).run()
