"""The walk over the exported graph (`_Builder.run`: placeholders, ops by name or table, the
model output), the generic elementwise / reduction / pooling rules, and turning classes of tied
spaces into `Group`s; `export_graph` and `dependency_groups`, the engine's entry points."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.prune.graph.groups import Group, Member, PruneGraphError
from condense.prune.graph.layers import LayerRules
from condense.prune.graph.nodes import (
    ELEMENTWISE,
    EXACT_REDUCE,
    FACTORIES,
    NORM_STATS,
    POINTWISE,
    POOL,
    REDUCE,
    TraceStop,
    op_name,
    shape_of,
    where_of,
)
from condense.prune.graph.reshape import ReshapeRules
from condense.prune.graph.slicing import SliceRules
from condense.prune.graph.spaces import Desc, Fold, Segs, is_inner, is_outerish


class _Builder(LayerRules, ReshapeRules, SliceRules):
    """Walks the exported graph once, giving every tensor dim a descriptor, and reads the groups off."""

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> list[Group]:
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                shape = shape_of(node)
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
            except TraceStop as e:
                self.freeze_all(node, f"{where_of(node)}: {e}")
                out = None
            self.desc[node] = self.checked(node, out)
        return self.groups()

    def checked(self, node: Any, out: Any) -> Any:
        shape = shape_of(node)
        if shape is None:
            if isinstance(out, tuple):
                return out
            val = node.meta.get("val")
            if out is not None:  # a handler answered for one tensor, the op returns several: lose nothing
                self.freeze_all(node, f"{where_of(node)} returns several tensors")
                out = None
            if isinstance(val, list | tuple) and out is None:
                return tuple([None] * v.dim() if isinstance(v, torch.Tensor) else None for v in val)
            return None
        if out is None:
            return [None] * len(shape)
        if len(out) != len(shape):
            self.freeze_all(node, f"{where_of(node)}: channel bookkeeping lost the rank")
            return [None] * len(shape)
        for i, d in enumerate(out):
            if is_inner(d):
                continue  # positions inside a unit may be sliced (rotary halves)
            width = self.width(d)
            if width is not None and width != shape[i]:
                self.freeze(d, f"{where_of(node)}: channel bookkeeping does not match the shape")
                out[i] = None
        return out

    def tracked(self, node: Any) -> bool:
        for a in node.all_input_nodes:
            d = self.desc.get(a)
            if isinstance(d, list) and any(x is not None for x in d):
                return True
            if isinstance(d, tuple) and any(isinstance(t, list) and any(x is not None for x in t) for t in d):
                return True
        return False

    def visit(self, node: Any) -> Any:
        op = op_name(node)
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
        raise TraceStop("this operation is not known to preserve or map channels")

    # elementwise & friends
    def elementwise(self, node: Any) -> list[Desc]:
        out_shape = shape_of(node)
        if out_shape is None:
            raise TraceStop("no tensor output")
        res: list[Desc] = [None] * len(out_shape)
        sizes = [1] * len(out_shape)
        first = [True] * len(out_shape)
        for a in self.tensor_args(node):
            dims, shape = self.dims_of(a), shape_of(a)
            if dims is None:
                continue
            lead = len(out_shape) - len(shape)
            for k, (d, size) in enumerate(zip(dims, shape, strict=True)):
                i = k + lead
                if first[i]:
                    res[i], sizes[i], first[i] = d, size, False
                else:
                    res[i] = self.tie(res[i], d, sizes[i], size, f"{where_of(node)} combines channels with other values")
                    sizes[i] = max(sizes[i], size)
        return res

    def reduce(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        k = 2 if op_name(node) in ("linalg_vector_norm", "norm") else 1  # norm(x, ord, dim, keepdim)
        rd = node.args[k] if len(node.args) > k else node.kwargs.get("dim")
        keep = node.args[k + 1] if len(node.args) > k + 1 else node.kwargs.get("keepdim", False)
        if rd is None or rd == []:
            rd = list(range(len(shape)))
        rd = [rd] if isinstance(rd, int) else list(rd)
        rd = {r % len(shape) for r in rd}
        op = op_name(node)
        out: list[Desc] = []
        for i, d in enumerate(dims):
            if i in rd:
                if is_outerish(d) or isinstance(d, Fold):
                    self.freeze(d, f"{where_of(node)} reduces over heads")
                elif isinstance(d, Segs) and op not in EXACT_REDUCE and not (op in NORM_STATS and keep):
                    # a max / prod / mean-as-a-feature over channels changes when channels go
                    self.freeze(d, f"{where_of(node)} reduces over channels ({op})")
                if keep:
                    out.append(None)
            else:
                out.append(d)
        if isinstance(node.meta.get("val"), list | tuple):  # max / min over a dim: (values, indices)
            return (out, list(out))  # type: ignore[return-value]
        return out

    def pool(self, node: Any) -> list[Desc]:
        _, dims, shape = self.arg_dims(node)
        nspatial = {"1d": 1, "2d": 2, "3d": 3}.get(op_name(node)[-2:], len(shape) - 2)
        if op_name(node) in ("pad", "constant_pad_nd"):
            pads = list(node.args[1])  # (last dim's before, after, the one before it, ...)
            out = list(dims)
            for k in range(len(pads) // 2):
                i = len(dims) - 1 - k
                if pads[2 * k] or pads[2 * k + 1]:
                    self.freeze(dims[i], f"{where_of(node)} pads a channel dim")
                    out[i] = None
            return out
        for d in dims[len(dims) - nspatial:]:
            self.freeze(d, f"{where_of(node)} pools or pads over a channel dim")
        out = dims[: len(dims) - nspatial] + [None] * nspatial
        if op_name(node) == "max_pool2d_with_indices":
            return (out, list(out))  # type: ignore[return-value]
        return out

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
