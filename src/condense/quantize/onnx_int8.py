"""Real int8 ONNX from a statically quantized model: QDQ graph with OUR scales, run by ONNX Runtime.

Approach: the quantized model is exported as its fp32 twin (BN already folded, fake-quant "off")
with `export_onnx`, then QuantizeLinear / DequantizeLinear nodes are inserted with `onnx.helper`
using the scales and zero points frozen during calibration:

* weights are stored as int8 initializers + DequantizeLinear, per output channel (axis 0), so the
  file really holds one byte per weight (~4x smaller than fp32);
* biases are int32 initializers + DequantizeLinear with scale = input scale x weight scale;
* activations get a QuantizeLinear -> DequantizeLinear pair (per tensor, uint8 or int8) where the
  simulation quantizes them: each layer's input, and its output after an absorbed ReLU.

ONNX Runtime's graph optimizer (level ORT_ENABLE_ALL) then fuses each `DQ -> Conv / Gemm / MatMul
-> Q` group into integer kernels (QLinearConv, QGemm, QLinearMatMul, ...), removes ReLUs whose
output grid already starts at zero, and keeps data in int8 between layers: integer-only inference
as in Jacob et al. 2018. Rounding (half to even, true division) is the same as in
`primitives.quantize`, so ORT and the PyTorch simulation agree up to the requantization rounding
of the integer kernels; the export measures that agreement (top-1 and max logit difference).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.core.io import atomic_path
from condense.quantize.fake_quant import (
    INT32_MAX,
    INT32_MIN,
    QuantWrapper,
    quant_wrappers,
    set_quant_mode,
)
from condense.quantize.primitives import QuantSpec, quantize

#: Float compute ops that should have become integer kernels after ORT's QDQ fusion.
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv")


@dataclasses.dataclass
class Int8ExportResult:
    """What `export_int8_onnx` wrote and how it compares with the fp32 file and the simulation."""

    path: Path
    bytes: int
    fp32_bytes: int
    size_ratio: float  # int8 bytes / fp32 bytes
    fp32_path: Path | None  # where the fp32 twin was kept (None: measured, then deleted)
    activation_dtype: str
    quantized_layers: list[str]
    qdq_nodes: dict[str, int]  # QuantizeLinear / DequantizeLinear counts in the file
    ort_ops: dict[str, int]  # op types in ONNX Runtime's optimized graph (what really runs)
    float_compute_ops: int  # Conv / Gemm / MatMul still in float after ORT's fusion
    checked_samples: int
    top1_agreement: float | None  # % of samples where ORT int8 and the simulation pick the same class
    max_abs_diff: float | None  # max |ORT int8 - simulation| over the outputs
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["fp32_path"] = None if self.fp32_path is None else str(self.fp32_path)
        return d


# -- ONNX Runtime sessions ----------------------------------------------------------------------
def ort_session(path: str | os.PathLike[str], threads: int | None = None, optimized_path: str | None = None) -> Any:
    """A CPU session with ORT_ENABLE_ALL, sequential execution and `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(session: Any, x: torch.Tensor) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32))})[0]


# -- graph surgery ------------------------------------------------------------------------------
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


def _find_layer_node(G: _Graph, name: str, w: QuantWrapper) -> tuple[Any, str, bool]:
    """(node, weight initializer, transposed) of the ONNX node computing wrapper `name`."""
    weight = w.module.weight.detach().cpu().float().numpy()
    candidates = [f"{name}.module.weight", f"{name}.weight"]
    init = next((c for c in candidates if c in G.inits), None)
    if init is None or G.array(init).shape not in (weight.shape, weight.T.shape):
        init = next((n for n, t in G.inits.items() if tuple(t.dims) in (weight.shape, weight.T.shape)
                     and (np.array_equal(G.array(n), weight) or np.array_equal(G.array(n), weight.T))), None)
    if init is None:
        raise RunError(f"int8 export: cannot find the weight of {name!r} in the exported graph")
    users = [n for n in G.consumers(init) if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(users) != 1 or list(users[0].input).index(init) != 1:
        raise RunError(f"int8 export: the weight of {name!r} is not read by exactly one Conv / Gemm / MatMul")
    transposed = G.array(init).shape != weight.shape or (weight.ndim == 2 and weight.shape[0] == weight.shape[1]
                                                         and not np.array_equal(G.array(init), weight))
    return users[0], init, transposed


def _quantize_weight(G: _Graph, node: Any, init: str, transposed: bool, w: QuantWrapper) -> None:
    from onnx import helper

    spec = w.weight_fq.spec
    q = quantize(w.module.weight.detach().cpu(), w.weight_fq.scale.cpu(), w.weight_fq.zero_point.cpu(),
                 spec.qmin, spec.qmax, axis=0 if spec.per_channel else None).numpy().astype(np.int8)
    if transposed:
        q = np.ascontiguousarray(q.T)
    scale = w.weight_fq.scale.detach().cpu().numpy().astype(np.float32)
    zp = w.weight_fq.zero_point.detach().cpu().numpy().astype(np.int8)
    qi = G.add_init(G.unique(f"{init}_quantized"), q)
    si = G.add_init(G.unique(f"{init}_scale"), scale)
    zi = G.add_init(G.unique(f"{init}_zero_point"), zp)
    out = G.unique(f"{init}_dequantized")
    attrs = {"axis": 1 if transposed else 0} if spec.per_channel else {}
    G.g.node.append(helper.make_node("DequantizeLinear", [qi, si, zi], [out], name=G.unique("DequantizeLinear"), **attrs))
    node.input[1] = out


def _quantize_bias(G: _Graph, node: Any, w: QuantWrapper, notes: list[str], name: str) -> None:
    from onnx import helper

    if len(node.input) < 3 or not node.input[2]:
        return
    if node.input[2] not in G.inits:
        notes.append(f"{name}: bias is not a constant in the graph; left in float")
        return
    b = w.module.bias
    if b is None:
        return
    scale = w.bias_scale().detach().cpu().expand_as(b)
    q = quantize(b.detach().cpu(), scale, torch.zeros_like(scale, dtype=torch.int32), INT32_MIN, INT32_MAX, axis=0)
    qi = G.add_init(G.unique(f"{node.input[2]}_quantized"), q.numpy().astype(np.int32))
    si = G.add_init(G.unique(f"{node.input[2]}_scale"), scale.numpy().astype(np.float32))
    zi = G.add_init(G.unique(f"{node.input[2]}_zero_point"), np.zeros(scale.shape, dtype=np.int32))
    out = G.unique(f"{node.input[2]}_dequantized")
    G.g.node.append(helper.make_node("DequantizeLinear", [qi, si, zi], [out], name=G.unique("DequantizeLinear"), axis=0))
    node.input[2] = out


def _output_tensor(G: _Graph, node: Any, w: QuantWrapper, name: str) -> str:
    """The tensor the wrapper's output quantizer sits on: the layer output, or its fused ReLU's."""
    t = node.output[0]
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
    """Drop per-node debug metadata (exporter name scopes, rewrite-rule names) and doc strings."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""


def insert_qdq(model: Any, wrappers: dict[str, QuantWrapper], activation_dtype: str, notes: list[str]) -> list[str]:
    """Rewrite an fp32 ONNX model of `wrappers`' layers into QDQ form with their qparams (in place)."""
    G = _Graph(model)
    _global_pools(G)
    found = {name: _find_layer_node(G, name, w) for name, w in wrappers.items()}
    for name, w in wrappers.items():  # outputs first: every reader sees the quantized tensor
        if w.output_fq is not None:
            t = _output_tensor(G, found[name][0], w, name)
            s, z = _act_qparams(w.output_fq.spec, w.output_fq.scale, w.output_fq.zero_point, activation_dtype)
            _insert_qdq(G, t, s, z, rewire=None)
    for name, w in wrappers.items():
        node, init, transposed = found[name]
        s, z = _act_qparams(w.input_fq.spec, w.input_fq.scale, w.input_fq.zero_point, activation_dtype)
        if _dq_params(G, node.input[0]) != (float(s), int(z)):
            _insert_qdq(G, node.input[0], s, z, rewire=[node])
        _quantize_weight(G, node, init, transposed, w)
        _quantize_bias(G, node, w, notes, name)
    _drop_unused_initializers(G)
    _toposort(G)
    return list(found)


# -- the export verb ----------------------------------------------------------------------------
def _inputs(x: Any) -> torch.Tensor:
    if isinstance(x, dict):
        x = x["input"]
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"int8 export: inputs must be tensors, got {type(x).__name__}")
    return x


def export_int8_onnx(
    qmodel: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    heldout: torch.Tensor | None = None,
    activation_dtype: str = "uint8",
    fp32_path: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    opset: int = 18,
) -> Int8ExportResult:
    """Write `qmodel` (from static PTQ) as a QDQ int8 ONNX file and check it in ONNX Runtime.

    `heldout` inputs (default: `example`) are run through ORT int8 and through the PyTorch
    simulation to measure top-1 agreement and max output difference. The fp32 twin is exported
    for the size comparison and kept at `fp32_path` if given. `activation_dtype` "uint8" (ORT's
    default U8S8 kernels) or "int8" changes only the zero-point encoding, not the grid.
    """
    import onnx

    from condense.export.onnx import export_onnx, onnx_file_bytes

    if activation_dtype not in ("uint8", "int8"):
        raise ConfigError(f"activation_dtype must be 'uint8' or 'int8', got {activation_dtype!r}")
    wrappers = quant_wrappers(qmodel)
    if not wrappers:
        raise ConfigError("export_int8_onnx: the model has no quantized layers; run quantize(..., method='static') first")
    if any(w.mode != "quantize" for w in wrappers.values()):
        raise ConfigError("export_int8_onnx: calibrate and freeze first (some layers are not in 'quantize' mode)")
    example = _inputs(example)
    notes: list[str] = []
    low = sorted({w.weight_fq.spec.bits for w in wrappers.values()} - {8})
    if low:
        notes.append(f"{'/'.join(map(str, low))}-bit weights are stored in int8 containers (exact values, no packing)")

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".int8", dir=target.parent))
    try:
        twin = copy.deepcopy(qmodel).eval()
        set_quant_mode(twin, "off")
        fp32_file = work / "fp32.onnx"
        export_onnx(twin, example, fp32_file, opset=opset)
        proto = onnx.load(str(fp32_file))
        strip_metadata(proto)  # on both files, so the size comparison is like for like
        onnx.save(proto, str(fp32_file))
        fp32_bytes = onnx_file_bytes(fp32_file)

        layers = insert_qdq(proto, wrappers, activation_dtype, notes)
        onnx.checker.check_model(proto)
        with atomic_path(target) as tmp:
            onnx.save(proto, str(tmp))
        if fp32_path is not None:
            with atomic_path(fp32_path) as tmp:
                shutil.copyfile(fp32_file, tmp)
        size = onnx_file_bytes(target)

        optimized = work / "optimized.onnx"
        try:
            session = ort_session(target, threads, optimized_path=str(optimized))
        except Exception as e:  # ORT raises its own exception types
            raise RunError(f"ONNX Runtime cannot load the int8 model {target}: {e}") from e
        ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node) if optimized.is_file() else Counter()
        float_ops = sum(ops[o] for o in FLOAT_COMPUTE_OPS)
        if float_ops:
            notes.append(f"{float_ops} Conv/Gemm/MatMul node(s) still run in float after ORT's QDQ fusion")

        x = _inputs(heldout) if heldout is not None else example
        agreement, max_diff = simulation_agreement(qmodel, session, x)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    qdq = Counter(n.op_type for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    return Int8ExportResult(
        path=target, bytes=size, fp32_bytes=fp32_bytes, size_ratio=size / fp32_bytes,
        fp32_path=None if fp32_path is None else Path(fp32_path), activation_dtype=activation_dtype,
        quantized_layers=layers, qdq_nodes=dict(qdq), ort_ops=dict(sorted(ops.items())),
        float_compute_ops=float_ops, checked_samples=len(x), top1_agreement=agreement,
        max_abs_diff=max_diff, notes=notes,
    )


@torch.no_grad()
def simulation_agreement(qmodel: nn.Module, session: Any, x: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """(top-1 agreement %, max |diff|) between an ORT session and the PyTorch simulation on `x`."""
    device = next((p.device for p in qmodel.parameters()), torch.device("cpu"))
    was_training = qmodel.training
    qmodel.eval()
    same, total, worst = 0, 0, 0.0
    try:
        for xb in x.split(batch_size):
            ref = qmodel(xb.to(device)).float().cpu().numpy()
            got = _run(session, xb)
            worst = max(worst, float(np.abs(got - ref).max()))
            if ref.ndim >= 2:
                same += int((got.argmax(-1) == ref.argmax(-1)).sum())
                total += int(np.prod(ref.shape[:-1]))
    finally:
        qmodel.train(was_training)
    return (100.0 * same / total if total else float("nan")), worst


def ort_latency_comparison(
    int8_path: str | os.PathLike[str],
    fp32_path: str | os.PathLike[str],
    example: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, Any]:
    """Median ORT latency of the int8 and fp32 files at each batch size (same threads, ORT_ENABLE_ALL).

    Returns {"threads", "batches": {bs: {"fp32_ms", "int8_ms", "int8_over_fp32"}}, "notes"}; a note
    says so in words wherever int8 is not faster than fp32 on this machine.
    """
    from condense.evaluate.profile import measure_latency

    threads = threads or os.cpu_count() or 1
    x1 = _inputs(example)[:1].detach().cpu().numpy().astype(np.float32)
    sessions = {"fp32": ort_session(fp32_path, threads), "int8": ort_session(int8_path, threads)}
    out: dict[str, Any] = {"threads": threads, "batches": {}, "notes": []}
    for bs in batch_sizes:
        feed = np.ascontiguousarray(np.repeat(x1, bs, axis=0))
        row: dict[str, float] = {}
        for kind, sess in sessions.items():
            name = sess.get_inputs()[0].name
            lat = measure_latency(lambda s=sess, n=name, f=feed: s.run(None, {n: f}), warmup=warmup, repeats=repeats)
            row[f"{kind}_ms"] = float(lat["p50_ms"])
        row["int8_over_fp32"] = row["int8_ms"] / row["fp32_ms"]
        if row["int8_over_fp32"] >= 1.0:
            out["notes"].append(f"int8 is NOT faster than fp32 at batch {bs} on this CPU "
                                f"({row['int8_ms']:.3f} ms vs {row['fp32_ms']:.3f} ms)")
        out["batches"][int(bs)] = row
    return out

