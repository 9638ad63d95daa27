"""Tracer rules for ops that take parts of dims or put them together: select / unbind (fused
qkv), slice, split / chunk, cat / stack, index / gather, roll and flip."""
from __future__ import annotations

import itertools
import math
from typing import Any

from condense.prune.graph.nodes import TraceStop, shape_of, where_of
from condense.prune.graph.spaces import Desc, Seg, Segs, Split, is_inner, is_outerish
from condense.prune.graph.tracer import Tracer


class SliceRules(Tracer):
    def op_select(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        dim, index = node.args[1] % len(dims), node.args[2]
        parts = self.pick(dims, shape, dim, f"{where_of(node)} selects one channel")
        if parts is None:
            return dims[:dim] + dims[dim + 1:]
        return parts[index % len(parts)]

    def op_unbind(self, node: Any) -> Any:
        _, dims, shape = self.arg_dims(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(dims)
        parts = self.pick(dims, shape, dim, f"{where_of(node)} unbinds channels")
        if parts is None:
            return tuple(dims[:dim] + dims[dim + 1:] for _ in range(shape[dim]))
        return tuple(parts)

    def pick(self, dims: list[Desc], shape: tuple[int, ...], dim: int, why: str) -> list[list[Desc]] | None:
        """The dims left after taking each index of a lazy split's outer dim (fused qkv)."""
        d = dims[dim]
        if d is None:
            return None
        if is_outerish(d) and len(self.sp.live((d.space, math.prod(d.sizes)))) == 1:
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
        if is_inner(d):
            return dims  # inside a unit (rotary halves of a head)
        d = self.outer(d, f"{where_of(node)} slices channels")
        if isinstance(d, Segs) and step == 1 and self._cut(d, [start, end]):
            pos, keep = 0, []
            for s, w in self.segs(d):
                if pos >= start and pos + w <= end:
                    keep.append((s, w))
                pos += w
            if sum(w for _, w in keep) == end - start:
                dims[dim] = Segs(tuple(keep))
                return dims
        self.freeze(d, f"{where_of(node)} slices channels")
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
        why = f"{where_of(node)} splits channels"
        if isinstance(d, Split):
            d = self.outer(d, why) if is_outerish(d) else d
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
        out_shape = shape_of(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(out_shape)
        why = f"{where_of(node)} concatenates"
        parts: list[tuple[list[Desc], tuple[int, ...]]] = []
        for t in tensors:
            dims, shape = self.dims_of(t), shape_of(t)
            if dims is None or shape is None:
                raise TraceStop("concatenates something that is not a tensor")
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
            if is_inner(d):
                inner = True
                continue
            d = self.outer(d, why)
            if d is None:
                segs.append((self.sp.new(shape[dim], why + " channels with other values"), shape[dim]))
            else:
                segs += self.segs(d)
        if inner:
            res[dim] = next(dims[dim] for dims, _ in parts if is_inner(dims[dim]))
            for dims, _ in parts:
                if dims[dim] is not None and not is_inner(dims[dim]):
                    self.freeze(dims[dim], why)
        else:
            res[dim] = Segs(tuple(segs))
        return res

    op_concat = op_cat

    def op_stack(self, node: Any) -> list[Desc]:
        tensors = node.args[0]
        out_shape = shape_of(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(out_shape)
        first = self.dims_of(tensors[0])
        res = list(first)
        for t in tensors[1:]:
            dims = self.dims_of(t)
            for i in range(len(res)):
                res[i] = self.tie(res[i], dims[i], shape_of(tensors[0])[i], shape_of(t)[i], f"{where_of(node)} stacks")
        return res[:dim] + [None] + res[dim:]

    def op_index(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        idx = node.args[1]
        used = [i for i, t in enumerate(idx) if t is not None]
        for i in used:
            self.freeze(dims[i], f"{where_of(node)} indexes channels")
        for t in idx:
            if t is not None and hasattr(t, "op"):
                for d in self.dims_of(t) or ():
                    self.freeze(d, f"{where_of(node)} indexes with channels")
        out_shape = shape_of(node)
        rest = [d for i, d in enumerate(dims) if i not in used]
        if used == list(range(len(used))):
            return [None] * (len(out_shape) - len(rest)) + rest
        for d in rest:
            self.freeze(d, f"{where_of(node)} indexes")
        return [None] * len(out_shape)

    def op_gather(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        dim = node.args[1] % len(dims)
        self.freeze(dims[dim], f"{where_of(node)} gathers channels")
        idx = self.dims_of(node.args[2]) or []
        for d in idx:
            self.freeze(d, f"{where_of(node)} gathers with channels")
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
                self.freeze(dims[w % len(dims)], f"{where_of(node)} rolls channels")
                dims[w % len(dims)] = None
        return dims

    def op_flip(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        for w in node.args[1]:
            if dims[w % len(dims)] is not None:
                self.freeze(dims[w % len(dims)], f"{where_of(node)} flips channels")
                dims[w % len(dims)] = None
        return dims

