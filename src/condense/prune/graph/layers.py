"""Tracer rules for the ops that own parameters: linear / matmul, convolutions (grouped too),
batch / layer / RMS / group norms, embeddings and scaled-dot-product attention (heads, GQA)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from condense.prune.graph.nodes import TraceStop, module_fq, shape_of, where_of
from condense.prune.graph.spaces import Desc, Segs
from condense.prune.graph.tracer import Tracer


class LayerRules(Tracer):
    # layers
    def op_linear(self, node: Any) -> list[Desc]:
        x, dims, shape = self.arg_dims(node)
        wn = node.args[1]
        bn = node.args[2] if len(node.args) > 2 else None
        w = self.dims_of(wn)
        if w is None or len(w) != 2:
            raise TraceStop("a weight that is not a 2-d parameter")
        why = f"{where_of(node)} (linear)"
        self.contract(dims[-1], w[1], shape[-1], why)
        self.role(wn, 0, "out")
        self.role(wn, 1, "in")
        out = dims[:-1] + [w[0]]
        if bn is not None:
            b = self.dims_of(bn)
            out[-1] = self.tie(out[-1], b[0] if b else None, shape_of(wn)[0], shape_of(bn)[0], why)
            self.role(bn, 0, "chan")
        if module_fq(node) in self.mha or module_fq(node).rsplit(".", 1)[0] in self.mha:
            for d in (w[0], w[1]):
                self.freeze(d, f"nn.MultiheadAttention {module_fq(node)!r} checks its widths against its own attributes")
        return out

    def contract(self, a: Desc, b: Desc, size: int, why: str) -> None:
        self.tie(a, b, size, size, why)

    def op_addmm(self, node: Any) -> list[Desc]:
        bn, x, wn = node.args[:3]
        dims, shape = self.dims_of(x), shape_of(x)
        w = self.dims_of(wn)
        if dims is None or w is None or len(dims) != 2 or len(w) != 2:
            raise TraceStop("addmm on operands that are not matrices")
        why = f"{where_of(node)} (addmm)"
        self.contract(dims[1], w[0], shape[1], why)
        self.role(wn, 1, "out")
        self.role(wn, 0, "in")
        out = [dims[0], w[1]]
        b = self.dims_of(bn) if hasattr(bn, "op") else None
        if b:
            out[1] = self.tie(out[1], b[-1], shape_of(wn)[1], shape_of(bn)[-1], why)
            self.role(bn, len(b) - 1, "chan")
        return out

    def op_matmul(self, node: Any) -> list[Desc]:
        a, da, sa = self.arg_dims(node, 0)
        b, db, sb = self.arg_dims(node, 1)
        if len(sa) < 2 or len(sb) < 2:
            raise TraceStop("a matrix-vector product")
        why = f"{where_of(node)} (matmul)"
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
        w, wshape = self.dims_of(wn), shape_of(wn)
        if w is None or wshape is None:
            raise TraceStop("a convolution weight that is not a parameter")
        why = f"{where_of(node)} (convolution)"
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        if transposed and groups != 1:
            raise TraceStop("grouped transposed convolution")
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
            out[1] = self.tie(out[1], b[0] if b else None, wshape[out_dim], shape_of(bn)[0], why)
            self.role(bn, 0, "chan")
        return out


    def per_channel(self, node: Any, x_dim: int, params: Sequence[Any], why: str) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        d = dims[x_dim]
        for p in params:
            if p is None or not hasattr(p, "op"):
                continue
            pd = self.dims_of(p)
            d = self.tie(d, pd[0] if pd else None, shape[x_dim], shape_of(p)[0], why)
            self.role(p, 0, "chan")
        dims[x_dim] = d
        return dims

    def op_batch_norm(self, node: Any) -> list[Desc]:
        return self.per_channel(node, 1, node.args[1:5], f"{where_of(node)} (batch norm)")

    def op__native_batch_norm_legit_no_training(self, node: Any) -> Any:
        dims = self.per_channel(node, 1, node.args[1:5], f"{where_of(node)} (batch norm)")
        return (dims, None, None)

    def op_instance_norm(self, node: Any) -> list[Desc]:
        return self.per_channel(node, 1, node.args[1:5], f"{where_of(node)} (instance norm)")

    def op_layer_norm(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        nshape = list(node.args[1])
        params = [node.args[i] if len(node.args) > i else None for i in (2, 3)]
        if len(nshape) != 1:
            for d in dims[len(dims) - len(nshape):]:
                self.freeze(d, f"{where_of(node)} normalises over several dims")
            return dims
        if params[0] is None and dims[-1] is not None:
            self.freeze(dims[-1], f"{where_of(node)}: a norm without a weight keeps its width in its attributes")
        return self.per_channel(node, len(dims) - 1, params, f"{where_of(node)} (layer norm)")

    def op_rms_norm(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        if len(node.args[1]) != 1:
            for d in dims[-len(node.args[1]):]:
                self.freeze(d, f"{where_of(node)} normalises over several dims")
            return dims
        w = node.args[2] if len(node.args) > 2 else None
        if w is None and dims[-1] is not None:
            self.freeze(dims[-1], f"{where_of(node)}: a norm without a weight keeps its width in its attributes")
        return self.per_channel(node, len(dims) - 1, [w], f"{where_of(node)} (rms norm)")

    def op_group_norm(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        groups = node.args[1]
        why = f"{where_of(node)} (group norm)"
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
                dims[1] = self.tie(dims[1], pd[0] if pd else None, shape[1], shape_of(p)[0], why)
                self.role(p, 0, "chan")
        return dims

    def op_embedding(self, node: Any) -> list[Desc]:
        wn, idx = node.args[:2]
        w = self.dims_of(wn)
        idims = self.dims_of(idx) or []
        for d in idims:
            self.freeze(d, f"{where_of(node)} indexes with channels")
        if w is None or len(w) != 2:
            raise TraceStop("an embedding table that is not a 2-d parameter")
        self.freeze(w[0], f"{where_of(node)}: rows are looked up by index")
        self.role(wn, 1, "out")
        return [None] * len(shape_of(idx)) + [w[1]]

    def op_scaled_dot_product_attention(self, node: Any) -> list[Desc]:
        q, dq, sq = self.arg_dims(node, 0)
        k, dk, sk = self.arg_dims(node, 1)
        v, dv, sv = self.arg_dims(node, 2)
        why = f"{where_of(node)} (attention)"
        self.contract(dq[-1], dk[-1], sq[-1], why)
        for d in (dk[-2], dv[-2]):  # the softmax runs over the key positions
            self.freeze(d, f"{why}: channels as key positions")
        for j in range(len(sq) - 2):
            dq[j] = self.heads_tie(dq[j], dk[j], sq[j], sk[j], why)
            dq[j] = self.heads_tie(dq[j], dv[j], sq[j], sv[j], why)
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        if mask is not None and hasattr(mask, "op") and self.dims_of(mask) is not None:
            dm, sm = self.dims_of(mask), shape_of(mask)  # broadcast to (..., L, S): a per-head bias joins the heads
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
