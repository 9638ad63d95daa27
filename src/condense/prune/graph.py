"""Channel dependency groups for structured pruning, found by tracing the model with torch.fx.

Every tensor on the way from input to output carries a channel *descriptor*: a list of segments
`(space, expand)`, where a space is a set of channels created by one producer (a Conv/Linear
output, or the network input) and `expand` says how many consecutive positions each channel
occupies (1, or H*W after flattening C x H x W). Ops either pass the descriptor on (activations,
pooling, dropout, BatchNorm, depthwise conv, flatten), join it (`cat`), or tie spaces together
channel by channel (`add`, `mul`, ...: a union-find over spaces). A class of tied spaces is one
dependency *group*: removing channel i removes it from every producer's output, every BatchNorm
and depthwise conv in between, and every consumer's input.

Anything the tracer cannot follow on the channel path (an unknown function or module, a reshape
that mixes channels, permute, roll, slicing, grouped conv) raises `PruneGraphError` naming the
node, never a silently broken model. Groups tied to the network input or reaching the model
output (e.g. the classifier's logits) are never prunable. Discovery only depends on the
architecture, so it is deterministic (edit-log replay relies on that).
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from condense.prune.fxops import (
    CAT,
    CONVS,
    ELEMENTWISE,
    FLATTEN,
    NORMS,
    PASS_MODULES,
    REDUCE,
    RESHAPE,
    SPATIAL,
    PruneGraphError,
    ShapeRecorder,
    describe,
    node_arg,
    record_shapes,
    trace,
)

Desc = tuple[tuple[int, int], ...]  # (space id, expand) segments along the channel dim


@dataclasses.dataclass(frozen=True)
class Member:
    """One layer's share of a group: `role` "out" (Conv/Linear output rows), "in" (a consumer's
    input columns), "chan" (BatchNorm per-channel params) or "dw" (depthwise conv channels).
    Channel c of the group sits at positions `offset + c*expand ... + expand - 1` of that dim."""

    module: str
    role: str
    offset: int = 0
    expand: int = 1


@dataclasses.dataclass
class Group:
    """Channels that must be removed together. `root` names the first producer layer."""

    root: str
    size: int
    members: list[Member]
    prunable: bool
    reason: str = ""

    @property
    def producers(self) -> list[str]:
        return [m.module for m in self.members if m.role == "out"]

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members))


class _Spaces:
    """Union-find over channel spaces, each with a size, member list and optional 'fixed' reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: list[list[Member]] = []
        self.fixed: list[list[str]] = []

    def new(self, size: int, fixed: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.members.append([])
        self.fixed.append([fixed] if fixed else [])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise PruneGraphError(f"{where}: ties channel sets of different sizes ({self.size[ra]} vs {self.size[rb]})")
        ra, rb = min(ra, rb), max(ra, rb)
        self.parent[rb] = ra
        self.members[ra] += self.members[rb]
        self.fixed[ra] += self.fixed[rb]

    def add(self, space: int, member: Member) -> None:
        self.members[self.find(space)].append(member)

    def fix(self, space: int, reason: str) -> None:
        self.fixed[self.find(space)].append(reason)


def _segments(desc: Desc, spaces: _Spaces) -> list[tuple[int, int, int]]:
    """(space, expand, offset) for each segment."""
    out, off = [], 0
    for s, e in desc:
        out.append((s, e, off))
        off += spaces.size[s] * e
    return out


def _width(desc: Desc, spaces: _Spaces) -> int:
    return sum(spaces.size[s] * e for s, e in desc)


class _Builder:
    def __init__(self, model: nn.Module, gm: fx.GraphModule, rec: ShapeRecorder) -> None:
        self.model, self.gm, self.rec = model, gm, rec
        self.modules = dict(gm.named_modules())
        self.spaces = _Spaces()
        self.desc: dict[fx.Node, Desc | None] = {}
        self.seen_in: dict[str, Desc] = {}
        self.seen_out: dict[str, Desc] = {}

    def fail(self, node: fx.Node, why: str) -> PruneGraphError:
        return PruneGraphError(f"structured pruning cannot follow the channels through {describe(node, self.modules)}: {why}")

    def shape(self, node: Any) -> tuple[int, ...] | None:
        return self.rec.shapes.get(node) if isinstance(node, fx.Node) else None

    def unify(self, a: Desc, b: Desc, node: fx.Node) -> None:
        sa = [(self.spaces.size[s], e) for s, e in a]
        sb = [(self.spaces.size[s], e) for s, e in b]
        if sa != sb:
            raise self.fail(node, f"its operands' channels are laid out differently ({sa} vs {sb})")
        for (s1, _), (s2, _) in zip(a, b, strict=True):
            self.spaces.union(s1, s2, describe(node, self.modules))

    def run(self) -> list[Group]:
        for node in self.gm.graph.nodes:
            self.desc[node] = self.visit(node)
            d, shape = self.desc[node], self.shape(node)
            if d is not None and (shape is None or len(shape) < 2 or _width(d, self.spaces) != shape[1]):
                raise self.fail(node, f"channel bookkeeping does not match the output shape {shape}")
        return self.groups()

    def visit(self, node: fx.Node) -> Desc | None:
        if node.op == "placeholder":
            shape = self.shape(node)
            return ((self.spaces.new(shape[1], "network input"), 1),) if shape and len(shape) >= 2 else None
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for n in node.all_input_nodes:
                for s, _ in self.desc.get(n) or ():
                    self.spaces.fix(s, "reaches the model output")
            return None
        tracked = [n for n in node.all_input_nodes if self.desc.get(n) is not None]
        if not tracked:
            return None
        if node in self.rec.nested or (node.op == "call_function" and node.target is operator.getitem):
            raise self.fail(node, "it splits, indexes or returns several tensors")
        if self.shape(node) is None:
            return None  # a size / shape query: no tensor comes out
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        t = node.target
        if t in ELEMENTWISE:
            return self.elementwise(node)
        if t in SPATIAL:
            return self.passthrough(node)
        if t in REDUCE:
            return self.reduce(node)
        if t in FLATTEN:
            return self.flatten(node, node_arg(node, 1, "start_dim", 0), node_arg(node, 2, "end_dim", -1))
        if t in RESHAPE:
            return self.reshape(node)
        if t in CAT:
            return self.cat(node)
        raise self.fail(node, "this operation is not known to preserve or map channels")

    def first(self, node: fx.Node) -> tuple[fx.Node, Desc]:
        x = node.args[0] if node.args else next(iter(node.kwargs.values()))
        if not isinstance(x, fx.Node) or self.desc.get(x) is None:
            raise self.fail(node, "its first argument is not the tensor on the channel path")
        return x, self.desc[x]  # type: ignore[return-value]

    def passthrough(self, node: fx.Node) -> Desc:
        x, d = self.first(node)
        sx, so = self.shape(x), self.shape(node)
        if sx is None or so is None or len(sx) != len(so) or sx[:2] != so[:2]:
            raise self.fail(node, f"it changes the batch or channel dims ({sx} -> {so})")
        return d

    def elementwise(self, node: fx.Node) -> Desc:
        out = self.shape(node)
        result: Desc | None = None
        for a in node.all_input_nodes:
            sa = self.shape(a)
            if sa is None:
                continue
            d = self.desc.get(a)
            lead = len(out) - len(sa)
            if d is not None:
                if lead != 0:
                    raise self.fail(node, f"it broadcasts a channel-path tensor of shape {sa} to {out}")
                if sa[1] == 1 and out[1] != 1:
                    continue
                if result is None:
                    result = d
                else:
                    self.unify(result, d, node)
            elif 1 - lead >= 0 and sa[1 - lead] != 1:
                raise self.fail(node, f"it combines the channels with a constant tensor of shape {sa} (per-channel values)")
        if result is None:
            raise self.fail(node, "no operand carries the channels")
        return result

    def reduce(self, node: fx.Node) -> Desc:
        x, d = self.first(node)
        sx = self.shape(x)
        dims = node_arg(node, 1, "dim", None)
        dims = [dims] if isinstance(dims, int) else dims
        if not dims or any((k % len(sx)) in (0, 1) for k in dims):
            raise self.fail(node, f"it reduces over the batch or channel dim (dim={dims})")
        if len(self.shape(node)) < 2 or self.shape(node)[:2] != sx[:2]:
            raise self.fail(node, "unexpected output shape")
        return d

    def flatten(self, node: fx.Node, start: int, end: int) -> Desc:
        x, d = self.first(node)
        sx = self.shape(x)
        start, end = start % len(sx), end % len(sx)
        if start >= 2:
            return d
        if start != 1:
            raise self.fail(node, "it flattens the batch dim into the channels")
        factor = math.prod(sx[2:end + 1])
        return tuple((s, e * factor) for s, e in d)

    def reshape(self, node: fx.Node) -> Desc:
        x, d = self.first(node)
        sx, so = self.shape(x), self.shape(node)
        if len(so) >= 2 and so[0] == sx[0] and so[1] % sx[1] == 0:
            factor, k = so[1] // sx[1], 2
            while k < len(sx) and math.prod(sx[2:k]) < factor:
                k += 1
            if math.prod(sx[2:k]) == factor and math.prod(so[2:]) == math.prod(sx[k:]):
                return tuple((s, e * factor) for s, e in d)
        raise self.fail(node, f"the reshape {sx} -> {so} does not keep channels as contiguous blocks")

    def cat(self, node: fx.Node) -> Desc:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        so = self.shape(node)
        dim = node_arg(node, 1, "dim", 0) % len(so)
        descs: list[Desc] = []
        for t in tensors:
            d = self.desc.get(t) if isinstance(t, fx.Node) else None
            if d is None:
                d = ((self.spaces.new(self.shape(t)[1], "concatenated with a constant"), 1),)
            descs.append(d)
        if dim == 1:
            return tuple(seg for d in descs for seg in d)
        if dim == 0:
            raise self.fail(node, "it concatenates along the batch dim")
        for d in descs[1:]:
            self.unify(descs[0], d, node)
        return descs[0]

    def visit_module(self, node: fx.Node, m: nn.Module) -> Desc:
        name: str = node.target  # type: ignore[assignment]
        t = type(m)
        if t in PASS_MODULES:
            return self.passthrough(node)
        if t is nn.Flatten:
            return self.flatten(node, m.start_dim, m.end_dim)
        if t not in CONVS + NORMS + (nn.Linear,):
            raise self.fail(node, "this layer type is not supported on the channel path")
        x, d = self.first(node)
        if name in self.seen_in:  # a layer called more than once: its inputs must be the same channels
            self.unify(self.seen_in[name], d, node)
        self.seen_in[name] = d
        if t is nn.Linear and len(self.shape(x)) != 2:
            raise self.fail(node, f"Linear on a {len(self.shape(x))}-d input (only (batch, features) is supported)")
        depthwise = t in CONVS and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if t in CONVS and m.groups > 1 and not depthwise:
            raise self.fail(node, f"grouped convolution (groups={m.groups}) is not supported")
        role = "chan" if t in NORMS else "dw" if depthwise else "in"
        for s, e, off in _segments(d, self.spaces):
            if t in CONVS and e != 1:
                raise self.fail(node, "a flattened input feeds a convolution")
            self.spaces.add(s, Member(name, role, off, e))
        if role in ("chan", "dw"):
            return d
        if name not in self.seen_out:
            size = m.out_channels if t in CONVS else m.out_features
            out = self.spaces.new(size)
            self.spaces.add(out, Member(name, "out"))
            self.seen_out[name] = ((out, 1),)
        return self.seen_out[name]

    def groups(self) -> list[Group]:
        classes: dict[int, int] = {}
        for i in range(len(self.spaces.parent)):
            classes.setdefault(self.spaces.find(i), i)
        everything, groups = [], []
        for r in sorted(classes):
            members = list(dict.fromkeys(self.spaces.members[r]))
            everything.append((self.spaces.size[r], members))
            producers = [m.module for m in members if m.role == "out"]
            reasons = list(dict.fromkeys(self.spaces.fixed[r]))
            if producers:
                groups.append(Group(producers[0], self.spaces.size[r], members, not reasons, "; ".join(reasons)))
        self.check_coverage(everything)
        return groups

    def check_coverage(self, classes: list[tuple[int, list[Member]]]) -> None:
        """Every position of every touched layer dim must belong to exactly one channel class."""
        seen: dict[tuple[str, str], list[int]] = {}
        for size, members in classes:
            for mem in members:
                dim = "in" if mem.role == "in" else "out"
                seen.setdefault((mem.module, dim), []).extend(
                    mem.offset + c * mem.expand + j for c in range(size) for j in range(mem.expand)
                )
        for (name, dim), pos in seen.items():
            m = self.modules[name]
            if sorted(pos) != list(range(_dim_size(m, dim))):
                raise PruneGraphError(
                    f"structured pruning: the {dim}put channels of {name!r} ({type(m).__name__}) are reached "
                    "through paths the tracer could not map one-to-one; refusing to prune"
                )


def _dim_size(m: nn.Module, dim: str) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features if dim == "in" else m.out_features
    if isinstance(m, NORMS):
        return m.num_features
    return m.in_channels if dim == "in" else m.out_channels


def dependency_groups(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[Group]:
    """Trace `model` and return its channel groups in graph order (prunable or not)."""
    for name, m in model.named_modules():
        if getattr(m, "parametrizations", None) is not None and "weight" in m.parametrizations:
            raise PruneGraphError(f"structured pruning: {name!r} has a weight parametrization (masks?); call make_permanent() first")
    gm = trace(model)
    rec = record_shapes(gm, example_inputs)
    return _Builder(model, gm, rec).run()
