"""Exact float rewrites of a transformer ONNX graph that make ORT's dynamic int8 more accurate.

ORT's dynamic quantization gives each activation tensor ONE uint8 range per batch. In BERT-family
encoders a few input channels of some Linears are 10-20x larger than the rest, so that range
leaves the other channels a handful of levels. Two rewrites fix it without changing any output
in float arithmetic; only what the int8 kernels see changes:

* **SmoothQuant** (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
  Quantization for Large Language Models", ICML): for a Linear `Y = X W` (ONNX MatMul, W as
  (in, out)), `Y = (X diag(1/s)) (diag(s) W)` with `s_j = max|X_j|^a / max|W_j|^(1-a)`. The
  activation loses its outlier channels, the weight (quantized per output channel) absorbs them.
  Applied to the Linears that read a normalization output (the QKV and FFN-input Linears of a
  transformer block), one `Mul` per activation tensor: in post-LayerNorm BERT the LayerNorm
  output also feeds the residual, so the 1/s cannot be folded into the LayerNorm.
* **Outlier split** (LLM.int8()-style mixed precision, Dettmers et al. 2022, NeurIPS): for a
  pair `MatMul(W1) -> elementwise ops (bias, GELU) -> MatMul(W2)` (a feed-forward block), the k
  channels of the middle tensor with the largest calibration range are computed by a small float
  branch (their W1 columns, bias and activation, their W2 rows) that is added back to the int8
  result. The int8 MatMuls never see those channels.

The graph is matched by structure, not by node names: weight users are MatMul / Attention nodes
with a constant weight; smoothing groups are the weight users reading the same normalization
output; FFN pairs are found by walking back from a MatMul through elementwise nodes. So the
rewrites work on ORT's fused graph (Attention, BiasGelu, SkipLayerNormalization) and on the plain
exported graph alike.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from condense.core.errors import ConfigError, RunError
from condense.export.onnx import onnx_session, ort_input

#: Ops whose output is a normalization of their input: the Linears reading them are smoothed.
NORM_OPS = frozenset({"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
                      "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"})
#: Element-wise ops an FFN's middle tensor may pass through (bias Add, GELU in any spelling, ...).
ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Gelu", "BiasGelu", "FastGelu", "QuickGelu",
                             "Relu", "Tanh", "Sigmoid", "Pow", "Sqrt", "Neg", "Identity", "Softplus"})
WEIGHT_OPS = ("MatMul", "Attention")
_MAX_REGION = 24  # nodes between the two MatMuls of an FFN (a decomposed GELU has 5)


@dataclasses.dataclass
class WeightUse:
    """A node multiplying an activation by a constant weight stored as (in, out)."""

    node: Any  # onnx.NodeProto
    activation: str
    weight: str


@dataclasses.dataclass
class FfnPair:
    """`first` (MatMul) -> element-wise `region` -> `second` (MatMul): one feed-forward block."""

    first: WeightUse
    second: WeightUse
    region: list[Any]  # NodeProtos, in graph order
    channels: int


def smooth_scales(amax: np.ndarray, wmax: np.ndarray, alpha: float, eps: float = 1e-5) -> np.ndarray:
    """SmoothQuant's per-input-channel scale `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`.

    `amax`: calibration max |x| per input channel; `wmax`: max |w| over the weight's row j (the
    weights of every Linear reading the tensor). The activation is then multiplied by 1/s and
    the weight rows by s, which leaves `X W` unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    a = np.maximum(np.asarray(amax, np.float64), eps)
    w = np.maximum(np.asarray(wmax, np.float64), eps)
    return np.maximum(a ** alpha / w ** (1.0 - alpha), eps).astype(np.float32)


class GraphIndex:
    """An ONNX graph with lookups (producer, consumers, constant values) and in-place edits."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self._names: set[str] = set(self.inits)
        self.refresh()

    def refresh(self) -> None:
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.graph.node:
            for o in n.output:
                self.producer[o] = n
                self._names.add(o)
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            self._names.add(n.name)
        self.outputs = {o.name for o in self.graph.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or of a Constant node's output (None for a computed tensor)."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.inits or (name in self.producer and self.producer[name].op_type == "Constant")

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def put(self, name: str, value: np.ndarray) -> str:
        """Set initializer `name` to `value` (replacing it, or adding a new one)."""
        from onnx import numpy_helper

        t = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if name in self.inits:
            self.inits[name].CopyFrom(t)
        else:
            self.graph.initializer.append(t)
            self.inits[name] = t
            self._names.add(name)
        return name

    def add_const(self, base: str, value: np.ndarray) -> str:
        return self.put(self.fresh(base), value)

    def single_use(self, tensor: str) -> bool:
        return len(self.consumers.get(tensor, [])) == 1 and tensor not in self.outputs

    def finish(self) -> None:
        """Topological order, unused initializers dropped, stale shape annotations removed."""
        self.refresh()
        used = {i for n in self.graph.node for i in n.input} | self.outputs
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        self.inits = {t.name: t for t in keep}
        del self.graph.value_info[:]
        available = {i.name for i in self.graph.input} | set(self.inits) | {""}
        pending, ordered = list(self.graph.node), []
        while pending:
            ready = [n for n in pending if all(i in available for i in n.input)]
            if not ready:
                raise RunError("graph rewrite left a node whose input nothing produces")
            ids = {id(n) for n in ready}
            for n in ready:
                ordered.append(n)
                available.update(n.output)
            pending = [n for n in pending if id(n) not in ids]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        self.refresh()


# -- finding the pieces ------------------------------------------------------------------------
def weight_uses(gi: GraphIndex) -> list[WeightUse]:
    """MatMul nodes with a constant 2-D right operand and Attention nodes (their QKV weight)."""
    out = []
    for n in gi.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2 or n.input[1] not in gi.inits:
            continue
        if len(gi.inits[n.input[1]].dims) != 2:
            continue
        out.append(WeightUse(n, n.input[0], n.input[1]))
    return out


def smooth_groups(gi: GraphIndex, uses: Sequence[WeightUse]) -> dict[str, list[WeightUse]]:
    """Activation tensor -> the weight users reading it, for tensors a normalization op produces."""
    groups: dict[str, list[WeightUse]] = {}
    for u in uses:
        p = gi.producer.get(u.activation)
        if p is not None and p.op_type in NORM_OPS and p.output[0] == u.activation:
            groups.setdefault(u.activation, []).append(u)
    return groups


def ffn_pairs(gi: GraphIndex, uses: Sequence[WeightUse]) -> list[FfnPair]:
    """Every `MatMul -> element-wise ops -> MatMul` block whose middle tensors feed nothing else."""
    by_output = {u.node.output[0]: u for u in uses if u.node.op_type == "MatMul"}
    order = {id(n): i for i, n in enumerate(gi.graph.node)}
    pairs = []
    for second in uses:
        if second.node.op_type != "MatMul":
            continue
        region: dict[int, Any] = {}
        sources: set[str] = set()
        stack, ok = [second.activation], True
        while stack and ok:
            t = stack.pop()
            if t in by_output:
                sources.add(t)
                continue
            p = gi.producer.get(t)
            if p is None or p.op_type not in ELEMENTWISE_OPS or len(region) >= _MAX_REGION:
                ok = False
                break
            if id(p) in region:
                continue
            region[id(p)] = p
            stack += [i for i in p.input if not gi.is_const(i)]
        if not ok or len(sources) != 1 or not region:
            continue
        first = by_output[next(iter(sources))]
        channels = gi.inits[first.weight].dims[1]
        if gi.inits[second.weight].dims[0] != channels:
            continue
        nodes = sorted(region.values(), key=lambda n: order[id(n)])
        inside = {id(n) for n in nodes} | {id(second.node)}
        produced = [first.node.output[0]] + [o for n in nodes for o in n.output]
        if any(t in gi.outputs or any(id(c) not in inside for c in gi.consumers.get(t, [])) for t in produced):
            continue  # a middle tensor is used elsewhere: splitting it would change that use
        if not all(_splittable(gi.const(i), channels) for n in nodes for i in n.input if gi.is_const(i) and i):
            continue
        if not (gi.single_use(first.weight) and gi.single_use(second.weight)):
            continue
        pairs.append(FfnPair(first, second, nodes, int(channels)))
    return pairs


def _splittable(value: np.ndarray | None, channels: int) -> bool:
    """A constant is a scalar (shared by both halves) or one value per channel (sliced)."""
    return value is not None and (value.size == 1 or (value.ndim >= 1 and value.shape[-1] == channels
                                                      and value.size == channels))


# -- calibration statistics --------------------------------------------------------------------
def channel_amax(model: Any, tensors: Iterable[str], feeds: Iterable[Mapping[str, Any]],
                 threads: int | None = None) -> dict[str, np.ndarray]:
    """Max |x| per last-axis channel of each named tensor over the calibration `feeds`.

    `model`: an onnx ModelProto (not changed); `feeds`: batch dicts (torch tensors or arrays),
    fed by input name. The tensors are made graph outputs of a copy run in ONNX Runtime.
    """
    import onnx
    from onnx import TensorProto, helper

    names = list(dict.fromkeys(tensors))
    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    amax: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="condense-amax-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = onnx_session(path, threads=threads)
        del probe
        seen = 0
        for batch in feeds:
            outs = session.run(names, ort_input(session, dict(batch)))
            for n, v in zip(names, outs, strict=True):
                a = np.abs(np.asarray(v, np.float32).reshape(-1, v.shape[-1])).max(0)
                amax[n] = a if n not in amax else np.maximum(amax[n], a)
            seen += 1
    if not seen:
        raise ConfigError("calibration set is empty: give at least one non-empty batch")
    return amax


# -- the rewrites ------------------------------------------------------------------------------
def apply_smoothquant(gi: GraphIndex, groups: Mapping[str, Sequence[WeightUse]], amax: Mapping[str, np.ndarray],
                      alpha: float, skip_nodes: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Insert `Mul(x, 1/s)` before each group and scale its weight rows by s; returns what it did.

    A group whose weight users are all in `skip_nodes` (kept in float) is left alone, as is one
    whose weight is shared with another node.
    """
    from onnx import helper

    skip = set(skip_nodes)
    done = []
    for act, group in groups.items():
        if all(u.node.name in skip for u in group) or not all(gi.single_use(u.weight) for u in group):
            continue
        ws = [gi.const(u.weight) for u in group]
        if any(w is None or w.shape[0] != amax[act].shape[0] for w in ws):
            continue
        wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)  # type: ignore[union-attr]
        s = smooth_scales(amax[act], wmax, alpha)
        for u, w in zip(group, ws, strict=True):
            gi.put(u.weight, (w * s[:, None]).astype(np.float32))  # type: ignore[operator]
        inv = gi.add_const(f"{act}_smooth_inv", (1.0 / s).astype(np.float32))
        out = gi.fresh(f"{act}_smoothed")
        gi.graph.node.append(helper.make_node("Mul", [act, inv], [out], name=gi.fresh(f"{act}_smooth_Mul")))
        for u in group:
            u.node.input[0] = out
            u.activation = out
        done.append({"tensor": act, "nodes": [u.node.name for u in group],
                     "scale_min": float(s.min()), "scale_max": float(s.max())})
    gi.refresh()
    return done


def apply_outlier_split(gi: GraphIndex, pairs: Sequence[FfnPair], amax: Mapping[str, np.ndarray], k: int,
                        skip_nodes: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Move the `k` largest-range middle channels of each FFN pair to a float branch.

    `amax` holds the calibration range of each pair's middle tensor (`pair.second.activation`).
    Returns one record per split with the float branch's MatMul names (keep them out of int8).
    """
    from onnx import helper

    skip = set(skip_nodes)
    done = []
    for pair in pairs:
        if pair.second.node.name in skip or k < 1 or k >= pair.channels:
            continue
        a = amax[pair.second.activation]
        idx = np.sort(np.argsort(-a, kind="stable")[:k])
        rest = np.setdiff1d(np.arange(pair.channels), idx)
        w1, w2 = gi.const(pair.first.weight), gi.const(pair.second.weight)
        assert w1 is not None and w2 is not None
        tag = gi.fresh(f"{pair.second.node.name or pair.second.weight}_outliers")
        gi.put(pair.first.weight, np.ascontiguousarray(w1[:, rest]))
        gi.put(pair.second.weight, np.ascontiguousarray(w2[rest]))
        # the float branch: first MatMul on the outlier columns, the same element-wise ops, second MatMul
        rename = {pair.first.node.output[0]: gi.fresh(f"{tag}_h")}
        new = [helper.make_node("MatMul", [pair.first.activation, gi.add_const(f"{tag}_w1", w1[:, idx])],
                                [rename[pair.first.node.output[0]]], name=gi.fresh(f"{tag}_MatMul1"))]
        for node in pair.region:
            inputs = []
            for j, i in enumerate(node.input):
                value = gi.const(i) if i else None
                if value is not None and value.size > 1:  # per-channel constant: slice both halves
                    node.input[j] = gi.add_const(f"{i}_kept", np.ascontiguousarray(value[..., rest]))
                    inputs.append(gi.add_const(f"{tag}_c", np.ascontiguousarray(value[..., idx])))
                else:
                    inputs.append(rename.get(i, i))
            outputs = []
            for o in node.output:
                rename[o] = gi.fresh(f"{tag}_{o}")
                outputs.append(rename[o])
            copy = helper.make_node(node.op_type, inputs, outputs, name=gi.fresh(f"{tag}_{node.op_type}"),
                                    domain=node.domain or None)
            copy.attribute.extend(node.attribute)
            new.append(copy)
        y = gi.fresh(f"{tag}_y")
        second_float = gi.fresh(f"{tag}_MatMul2")
        new.append(helper.make_node("MatMul", [rename[pair.second.activation], gi.add_const(f"{tag}_w2", w2[idx])],
                                    [y], name=second_float))
        out = pair.second.node.output[0]
        int8_out = gi.fresh(f"{out}_int8")
        pair.second.node.output[0] = int8_out
        new.append(helper.make_node("Add", [int8_out, y], [out], name=gi.fresh(f"{tag}_Add")))
        gi.graph.node.extend(new)
        done.append({"node": pair.second.node.name, "channels": [int(i) for i in idx],
                     "float_nodes": [new[0].name, second_float],
                     "channel_amax": [float(a[i]) for i in idx], "median_amax": float(np.median(a))})
    gi.refresh()
    return done


def load_graph(path: str | os.PathLike[str]) -> GraphIndex:
    import onnx

    return GraphIndex(onnx.load(str(path)))


__all__ = [
    "ELEMENTWISE_OPS", "NORM_OPS", "FfnPair", "GraphIndex", "WeightUse", "apply_outlier_split", "apply_smoothquant",
    "channel_amax", "ffn_pairs", "load_graph", "smooth_groups", "smooth_scales", "weight_uses",
]
