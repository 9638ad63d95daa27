"""QDQ graph surgery: turn an fp32 ONNX graph into QuantizeLinear / DequantizeLinear form.

`insert_qdq(model, wrappers, activation_dtype, notes)` rewrites, in place, the fp32 ONNX export of a
statically quantized model so that it computes what the PyTorch simulation computes, with the
simulation's own scales and zero points (Jacob et al. 2018 integer arithmetic; the QDQ format of
the ONNX spec, which ONNX Runtime fuses into integer kernels):

* each quantized layer (Conv / Gemm / MatMul, found by its weight initializer) reads an int8
  weight through DequantizeLinear (per output channel) and an int32 bias through
  DequantizeLinear (scale = input scale x weight scale);
* its input gets a Q -> DQ pair, and so does its output (after a fused Relu / Clip) when the
  simulation quantizes it; a tensor already quantized with the same parameters is not
  quantized twice;
* ReduceMean over H, W becomes GlobalAveragePool, which ORT runs as an integer kernel.

`weight_dtype="uint8"` stores the same integer weights shifted by 128 (zero point 128): the values
are unchanged, and ONNX Runtime then runs U8U8 kernels, which cannot saturate on x86 CPUs without
VNNI (`condense.core.cpu`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from condense.core.errors import ConfigError, RunError
from condense.quantize.modules.fake_quant import INT32_MAX, INT32_MIN, QuantWrapper
from condense.quantize.modules.primitives import QuantSpec, quantize


class _Graph:
    """Index over an ONNX graph: initializers, producers, consumers, unique names."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self._n = 0
        self.qdq_cache: dict[tuple[str, float, int], str] = {}

    def unique(self, base: str) -> str:
        self._n += 1
        return f"{base}__q{self._n}"

    def producer(self, tensor: str) -> Any | None:
        return next((n for n in self.g.node if tensor in n.output), None)

    def consumers(self, tensor: str) -> list[Any]:
        return [n for n in self.g.node if tensor in n.input]

    def add_init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        t = numpy_helper.from_array(array, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])


def _act_qparams(spec: QuantSpec, scale: torch.Tensor, zp: torch.Tensor, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor (scale, zero point) arrays for QuantizeLinear in `dtype` (same grid, shifted)."""
    if spec.bits != 8:
        raise ConfigError(f"int8 ONNX export needs 8-bit activations; a layer simulates {spec.bits}-bit activations")
    z = int(zp)
    lo, hi = spec.qmin, spec.qmax
    if dtype == "uint8":
        shift = 0 if not spec.signed else 128
        np_dtype: Any = np.uint8
    else:
        shift = -128 if not spec.signed else 0
        np_dtype = np.int8
    info = np.iinfo(np_dtype)
    if lo + shift < info.min or hi + shift > info.max:
        raise ConfigError(f"activation grid [{lo}, {hi}] does not fit {dtype}")
    return np.asarray(float(scale), dtype=np.float32), np.asarray(z + shift, dtype=np_dtype)


def _insert_qdq(G: _Graph, tensor: str, scale: np.ndarray, zp: np.ndarray, rewire: list[Any] | None) -> str:
    """Q -> DQ on `tensor`; rewire the `rewire` nodes (None: every reader and graph output)."""
    from onnx import helper

    key = (tensor, float(scale), int(zp))
    if rewire is not None and key in G.qdq_cache:
        out = G.qdq_cache[key]
    else:
        s = G.add_init(G.unique(f"{tensor}_scale"), scale)
        z = G.add_init(G.unique(f"{tensor}_zero_point"), zp)
        source = tensor
        if rewire is None:  # rename the producer's output so every reader sees the DQ output
            source = G.unique(f"{tensor}_float")
            prod = G.producer(tensor)
            if prod is None:
                raise RunError(f"int8 export: tensor {tensor!r} has no producer node")
            prod.output[list(prod.output).index(tensor)] = source
        q_out = G.unique(f"{tensor}_quantized")
        out = tensor if rewire is None else G.unique(f"{tensor}_dequantized")
        G.g.node.append(helper.make_node("QuantizeLinear", [source, s, z], [q_out], name=G.unique("QuantizeLinear")))
        G.g.node.append(helper.make_node("DequantizeLinear", [q_out, s, z], [out], name=G.unique("DequantizeLinear")))
        if rewire is not None:
            G.qdq_cache[key] = out
    for node in rewire or []:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = out
    return out


def _dq_params(G: _Graph, tensor: str) -> tuple[float, int] | None:
    """(scale, zero point) of the DequantizeLinear producing `tensor`, if any."""
    prod = G.producer(tensor)
    if prod is None or prod.op_type != "DequantizeLinear" or prod.input[1] not in G.inits:
        return None
    return float(G.array(prod.input[1])), int(G.array(prod.input[2]))


@dataclasses.dataclass
class _Layer:
    """Where one quantized layer lives in the ONNX graph."""

    node: Any  # the Conv / Gemm / MatMul node
    weight: str  # its weight initializer
    transposed: bool  # the initializer holds W^T (MatMul, Gemm without transB): scales on axis 1
    bias_node: Any | None  # the node whose input holds the bias (the layer, or MatMul's Add)
    bias_index: int
    output: str  # the layer's output tensor (after the bias Add for MatMul)


def _find_layer(G: _Graph, name: str, w: QuantWrapper) -> _Layer:
    """Locate wrapper `name`'s layer: its weight initializer (by name, else by value) and reader."""
    weight = w.module.weight.detach().cpu().float().numpy()
    shapes = (weight.shape, weight.T.shape)
    init = next((c for c in (f"{name}.module.weight", f"{name}.weight") if c in G.inits), None)
    if init is None or G.array(init).shape not in shapes:
        init = next((n for n, t in G.inits.items() if tuple(t.dims) in shapes
                     and (np.array_equal(G.array(n), weight) or np.array_equal(G.array(n), weight.T))), None)
    if init is None:
        raise RunError(f"int8 export: cannot find the weight of {name!r} in the exported graph")
    users = [n for n in G.consumers(init) if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(users) != 1 or list(users[0].input).index(init) != 1:
        raise RunError(f"int8 export: the weight of {name!r} is not read by exactly one Conv / Gemm / MatMul")
    node, stored = users[0], G.array(init)
    transposed = stored.shape != weight.shape or (weight.ndim == 2 and not np.array_equal(stored, weight))
    layer = _Layer(node, init, transposed, None, 2, node.output[0])
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2]:
            layer.bias_node = node
    elif w.module.bias is not None:  # MatMul: the bias is a following Add with a constant operand
        readers = G.consumers(node.output[0])
        if len(readers) == 1 and readers[0].op_type == "Add":
            add = readers[0]
            other = [i for i, t in enumerate(add.input) if t != node.output[0]]
            if len(other) == 1 and add.input[other[0]] in G.inits:
                layer.bias_node, layer.bias_index, layer.output = add, other[0], add.output[0]
    return layer


def integer_weight(w: QuantWrapper) -> np.ndarray:
    """The layer's weights on their integer grid (int8, the module's own layout)."""
    spec = w.weight_fq.spec
    return quantize(w.module.weight.detach().cpu(), w.weight_fq.scale.cpu(), w.weight_fq.zero_point.cpu(),
                    spec.qmin, spec.qmax, axis=0 if spec.per_channel else None).numpy().astype(np.int8)


def weight_columns(w: QuantWrapper) -> np.ndarray:
    """The integer weights as a GEMM's [K, N] operand (one column per output channel, per group)."""
    q = integer_weight(w)
    return q.reshape(q.shape[0], -1).T


def _quantize_weight(G: _Graph, layer: _Layer, w: QuantWrapper, weight_dtype: str) -> None:
    from onnx import helper

    q = integer_weight(w)
    if layer.transposed:
        q = np.ascontiguousarray(q.T)
    scale = w.weight_fq.scale.detach().cpu().numpy().astype(np.float32)
    zp = w.weight_fq.zero_point.detach().cpu().numpy().astype(np.int8)
    if weight_dtype == "uint8":  # same values, zero point 128: U8U8 kernels
        q = (q.astype(np.int16) + 128).astype(np.uint8)
        zp = (zp.astype(np.int16) + 128).astype(np.uint8)
    init = layer.weight
    qi = G.add_init(G.unique(f"{init}_quantized"), q)
    si = G.add_init(G.unique(f"{init}_scale"), scale)
    zi = G.add_init(G.unique(f"{init}_zero_point"), zp)
    out = G.unique(f"{init}_dequantized")
    attrs = {"axis": 1 if layer.transposed else 0} if w.weight_fq.spec.per_channel else {}
    G.g.node.append(helper.make_node("DequantizeLinear", [qi, si, zi], [out], name=G.unique("DequantizeLinear"), **attrs))
    layer.node.input[1] = out


def _quantize_bias(G: _Graph, layer: _Layer, w: QuantWrapper, notes: list[str], name: str) -> None:
    """int32 bias + DequantizeLinear (scale = input scale x weight scale), as the simulation rounds it."""
    from onnx import helper

    b = w.module.bias
    if b is None or layer.bias_node is None:
        return
    src = layer.bias_node.input[layer.bias_index]
    if src not in G.inits or G.array(src).size != b.numel():
        notes.append(f"{name}: bias is not a constant of the expected size in the graph; left in float")
        return
    scale = w.bias_scale().detach().cpu().expand_as(b)
    q = quantize(b.detach().cpu(), scale, torch.zeros_like(scale, dtype=torch.int32), INT32_MIN, INT32_MAX, axis=0)
    qi = G.add_init(G.unique(f"{src}_quantized"), q.numpy().astype(np.int32).reshape(G.array(src).shape))
    si = G.add_init(G.unique(f"{src}_scale"), scale.numpy().astype(np.float32))
    out = G.unique(f"{src}_dequantized")
    axis = G.array(src).ndim - 1
    # no zero-point input: it defaults to 0 of x's type (int32), as integer kernels expect
    G.g.node.append(helper.make_node("DequantizeLinear", [qi, si], [out], name=G.unique("DequantizeLinear"), axis=axis))
    layer.bias_node.input[layer.bias_index] = out


def _output_tensor(G: _Graph, layer: _Layer, w: QuantWrapper, name: str) -> str:
    """The tensor the wrapper's output quantizer sits on: the layer output, or its fused ReLU's."""
    t = layer.output
    if w.act is None:
        return t
    readers = G.consumers(t)
    ok = {"relu": ("Relu",), "relu6": ("Clip", "Relu6")}[w.act]
    if len(readers) != 1 or readers[0].op_type not in ok or t in [o.name for o in G.g.output]:
        raise RunError(f"int8 export: expected {w.act} right after {name!r} in the exported graph")
    return readers[0].output[0]


def _toposort(G: _Graph) -> None:
    """Reorder nodes topologically (new Q / DQ nodes were appended at the end)."""
    available = {i.name for i in G.g.input} | set(G.inits) | {""}
    nodes, ordered = list(G.g.node), []
    while nodes:
        ready = [n for n in nodes if all(i in available for i in n.input)]
        if not ready:
            raise RunError("int8 export: the rewritten graph has a cycle or a dangling input")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        nodes = [n for n in nodes if all(n is not r for r in ready)]
    del G.g.node[:]
    G.g.node.extend(ordered)


def _drop_unused_initializers(G: _Graph) -> None:
    used = {i for n in G.g.node for i in n.input} | {o.name for o in G.g.output}
    keep = [t for t in G.g.initializer if t.name in used]
    del G.g.initializer[:]
    G.g.initializer.extend(keep)
    G.inits = {t.name: t for t in keep}


def _global_pools(G: _Graph) -> None:
    """ReduceMean over H, W (keepdims) of a 4-D tensor -> GlobalAveragePool (same values).

    ORT fuses `DQ -> GlobalAveragePool -> Q` into an integer QLinearGlobalAveragePool that works
    on its channels-last int8 layout; a float ReduceMean would need a transpose and a DQ / Q.
    """
    from onnx import helper, shape_inference

    ranks = {}
    for v in shape_inference.infer_shapes(G.model).graph.value_info:
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    for i, n in enumerate(G.g.node):
        if n.op_type != "ReduceMean" or len(n.input) < 2 or n.input[1] not in G.inits:
            continue
        keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        if keep != 1 or ranks.get(n.input[0]) != 4 or sorted(int(a) % 4 for a in G.array(n.input[1]).ravel()) != [2, 3]:
            continue
        G.g.node[i].CopyFrom(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=n.name))


def strip_metadata(model: Any) -> None:
    """Drop debug-only data: per-node and per-input/output metadata (exporter name scopes,
    rewrite-rule names), doc strings and intermediate `value_info` shapes (ORT re-infers them)."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for v in [*model.graph.input, *model.graph.output]:
        del v.metadata_props[:]
    del model.graph.value_info[:]


def insert_qdq(model: Any, wrappers: dict[str, QuantWrapper], activation_dtype: str, notes: list[str],
               weight_dtype: str = "int8") -> list[str]:
    """Rewrite an fp32 ONNX model of `wrappers`' layers into QDQ form with their qparams (in place).

    `weight_dtype`: "int8" (U8S8 / S8S8 kernels) or "uint8" (the same values shifted by 128).
    """
    if weight_dtype not in ("int8", "uint8"):
        raise ConfigError(f"weight_dtype must be 'int8' or 'uint8', got {weight_dtype!r}")
    G = _Graph(model)
    _global_pools(G)
    found = {name: _find_layer(G, name, w) for name, w in wrappers.items()}
    for name, w in wrappers.items():  # outputs first: every reader sees the quantized tensor
        if w.output_fq is not None:
            t = _output_tensor(G, found[name], w, name)
            s, z = _act_qparams(w.output_fq.spec, w.output_fq.scale, w.output_fq.zero_point, activation_dtype)
            _insert_qdq(G, t, s, z, rewire=None)
    for name, w in wrappers.items():
        layer = found[name]
        node = layer.node
        s, z = _act_qparams(w.input_fq.spec, w.input_fq.scale, w.input_fq.zero_point, activation_dtype)
        if _dq_params(G, node.input[0]) != (float(s), int(z)):
            _insert_qdq(G, node.input[0], s, z, rewire=[node])
        _quantize_weight(G, layer, w, weight_dtype)
        _quantize_bias(G, layer, w, notes, name)
    _drop_unused_initializers(G)
    _toposort(G)
    return list(found)
