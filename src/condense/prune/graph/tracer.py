"""The tracer's state and descriptor algebra: per-node dim descriptors, tying two dims, cutting
and unifying segment lists, freezing what cannot be followed, parameter dims and their roles.
The op rules (`layers`, `reshape`, `slicing`) and the walk (`builder`) build on it."""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from condense.prune.graph.nodes import TraceStop, shape_of, where_of
from condense.prune.graph.spaces import Desc, Fold, Seg, Segs, Spaces, Split, is_inner


class Tracer:
    def __init__(self, model: nn.Module, ep: Any) -> None:
        self.model = model
        self.ep = ep
        sig = ep.graph_signature
        self.params: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.sp = Spaces()
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
        why = why or f"{where_of(node)} is not followed by the channel tracer"
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
        inner_a, inner_b = is_inner(a), is_inner(b)
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


    def dims_of(self, node: Any) -> list[Desc] | None:
        d = self.desc.get(node)
        return d if isinstance(d, list) else None

    def arg_dims(self, node: Any, i: int = 0) -> tuple[Any, list[Desc], tuple[int, ...]]:
        x = node.args[i]
        dims = self.dims_of(x) if hasattr(x, "op") else None
        shape = shape_of(x) if hasattr(x, "op") else None
        if dims is None or shape is None:
            raise TraceStop("an operand is not a tensor the tracer follows")
        return x, list(dims), shape

    def tensor_args(self, node: Any) -> list[Any]:
        return [a for a in list(node.args) + list(node.kwargs.values()) if hasattr(a, "op") and shape_of(a) is not None]
