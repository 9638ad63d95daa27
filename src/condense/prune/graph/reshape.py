"""Tracer rules for ops that move or regroup dims: transpose / permute / (un)squeeze / expand /
repeat, and views and reshapes (merging dims, lazy head splits, folds of data dims)."""
from __future__ import annotations

import math
from typing import Any

from condense.prune.graph.nodes import TraceStop, module_fq, reshape_groups, shape_of, where_of
from condense.prune.graph.spaces import Desc, Fold, Segs, Split, is_inner, is_outerish
from condense.prune.graph.tracer import Tracer


class ReshapeRules(Tracer):
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
        out_shape = shape_of(node)
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
                self.freeze(d, f"{where_of(node)} tiles channels")
                out.append(None)
            else:
                out.append(d)
        return out

    def op_flatten(self, node: Any) -> list[Desc]:
        return self.reshape_to(node, shape_of(node))

    def op_view(self, node: Any) -> list[Desc]:
        return self.reshape_to(node, shape_of(node))

    op_reshape = op_view
    op__unsafe_view = op_view
    op_unflatten = op_view
    op_view_as = op_view
    op_reshape_as = op_view

    def reshape_to(self, node: Any, out_shape: tuple[int, ...] | None) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        if out_shape is None:
            raise TraceStop("a reshape to a symbolic shape")
        groups = reshape_groups(shape, out_shape)
        if groups is None:
            raise TraceStop(f"a reshape {list(shape)} -> {list(out_shape)} the tracer cannot pair up")
        out: list[Desc] = [None] * len(out_shape)
        why = f"{where_of(node)} reshapes {list(shape)} -> {list(out_shape)}"
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
                for k, d in enumerate(self.split(merged, [out_shape[j] for j in outs], why, module_fq(node))):
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
            if not is_inner(last):
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
        if is_outerish(d) and math.prod(sizes) == d.sizes[d.idx]:
            d2 = self.outer(d, why)
            if isinstance(d2, Segs):
                return self.split(d2, sizes, why, module)
        self.freeze(d, why)
        return [None] * len(sizes)

