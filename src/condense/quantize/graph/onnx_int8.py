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
-> Q` group into integer kernels (QLinearConv, QGemm; MatMul with a float output becomes
MatMulIntegerToFloat), drops ReLUs whose output grid already starts at zero, runs the global
average pool as QLinearGlobalAveragePool, and keeps data in int8 (channels-last) between layers:
integer-only inference as in Jacob et al. 2018. What it really ran is read back from ORT's
optimized graph (`ort_ops`); float Conv / Gemm / MatMul left over are counted and noted. Ops the
simulation does not quantize (residual Adds, a ReLU after an Add) run in float between DQ / Q.
Rounding (half to even, true division) is the same as in `primitives.quantize`, so ORT and the
PyTorch simulation agree up to the requantization rounding of the integer kernels; the export
measures that agreement (top-1 and max output difference) on held-out inputs.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.cpu import TARGETS, can_saturate, detect_target, resolve_target
from condense.core.errors import ConfigError, RunError
from condense.core.io import atomic_path
from condense.evaluate.timing import interleaved_latency, timed_pass  # noqa: F401  (interleaved_latency: its home until issue 27)
from condense.export.onnx import export_onnx, onnx_file_bytes, onnx_session, ort_input
from condense.models.edits import edit_log
from condense.models.signature import repeat_batch
from condense.quantize.attached import int8_plan_of
from condense.quantize.graph.qdq_graph import insert_qdq, strip_metadata, weight_columns
from condense.quantize.modules.fake_quant import quant_wrappers, set_quant_mode

#: Float compute ops that should have become integer kernels after ORT's QDQ fusion.
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv")


@dataclasses.dataclass
class Int8ExportResult:
    """What `export_int8_onnx` wrote and how it compares with the fp32 file and the simulation."""

    path: Path
    bytes: int
    fp32_bytes: int
    size_ratio: float  # int8 bytes / fp32 bytes
    fp32_path: Path | None  # where the fp32 reference file was kept (None: measured, then deleted)
    activation_dtype: str
    quantized_layers: list[str]
    qdq_nodes: dict[str, int]  # QuantizeLinear / DequantizeLinear counts in the file
    ort_ops: dict[str, int]  # op types in ONNX Runtime's optimized graph (what really runs)
    float_compute_ops: int  # Conv / Gemm / MatMul still in float after ORT's fusion
    checked_samples: int
    top1_agreement: float | None  # % of samples where ORT int8 and the simulation pick the same class
    max_abs_diff: float | None  # max |ORT int8 - simulation| over the outputs
    notes: list[str]
    latency: dict[str, Any] | None = None  # `ort_latency_comparison` output when asked for
    details: dict[str, Any] | None = None  # method-specific record (the transformer path: what it did, cosine)
    target: str | None = None  # the CPU family the file is built for (`condense.core.cpu`)
    weight_dtype: str | None = None  # "int8" (U8S8 kernels) or "uint8" (U8U8: exact without VNNI)
    checked_on: str | None = None  # the CPU family the agreement above was measured on
    #: what `fp32_bytes`, `fp32_path` and the fp32 latency are: "original" (the `reference` model
    #: given to the export) or "bn_folded_twin" (the quantized model with fake-quant off: BatchNorm
    #: folded and biases corrected, so it agrees with the original on most, not all, predictions).
    #: Results written before issue 27 have no such field and were always the twin.
    fp32_reference: str = "bn_folded_twin"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["fp32_path"] = None if self.fp32_path is None else str(self.fp32_path)
        return d


#: plan type -> the function that exports a model carrying that plan (`quantize.attached.int8_plan_of`),
#: registered by the method that makes the plan (transformer_plan.py); called with
#: `export_int8_onnx`'s arguments (example, path, heldout=, fp32_path=, threads=, latency_batches=, target=)
PLAN_EXPORTERS: dict[type, Callable[..., Any]] = {}


# -- ONNX Runtime sessions ----------------------------------------------------------------------


def _run(session: Any, x: torch.Tensor) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32))})[0]



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
    latency_batches: Sequence[int] | None = None,
    target: str = "auto",
    reference: nn.Module | None = None,
) -> Int8ExportResult:
    """Write `qmodel` (from static PTQ) as a QDQ int8 ONNX file and check it in ONNX Runtime.

    `target`: the CPU family that will run the file ("auto": the one the model was quantized for,
    recorded in its edit log, else this CPU; `condense.core.cpu`). If
    some layer's weights can saturate that CPU's u8 x s8 pair sums (8-bit weights on x86 without
    VNNI; quantize with the same target to get 7-bit weights that cannot), the weights are
    written as uint8 with the same values, so ORT runs exact U8U8 kernels, and a note says so.
    The result names the target and the CPU the agreement was measured on.

    A Hugging Face model from `quantize(..., TransformerInt8Config())` is written by the
    transformer path instead (`condense.quantize.transformer.export_planned_int8`: dynamic int8,
    checked by cosine agreement with the fp32 export on `heldout`, a batch dict or data).

    `heldout` inputs (default: `example`) are run through ORT int8 and through the PyTorch
    simulation to measure top-1 agreement and max output difference. The fp32 reference of the
    size (and latency) comparison, kept at `fp32_path` if given, is `reference` (the float model
    before quantization) when given, else the quantized model's float twin (fake-quant off:
    BatchNorm folded and biases corrected, which agrees with the original on most predictions, not
    all); `fp32_reference` in the result, and a note, say which. `activation_dtype` "uint8" (ORT's
    default U8S8 kernels) or "int8" changes only the zero-point encoding, not the grid.
    With `latency_batches` (e.g. (1, 256)) the int8 and fp32 files are also timed in ORT
    (`ort_latency_comparison`, `threads` intra-op threads) and any slow-down is noted in words.
    """
    import onnx

    plan = int8_plan_of(qmodel)
    if plan is not None:  # a method that exports its own way (quantize(..., method "transformer"))
        exporter = PLAN_EXPORTERS.get(type(plan))
        if exporter is None:
            raise ConfigError(f"export_int8_onnx: no exporter registered for a {type(plan).__name__}")
        return exporter(qmodel, example, path, heldout=heldout, fp32_path=fp32_path, threads=threads,
                                   latency_batches=latency_batches, target=target)
    if activation_dtype not in ("uint8", "int8"):
        raise ConfigError(f"activation_dtype must be 'uint8' or 'int8', got {activation_dtype!r}")
    wrappers = quant_wrappers(qmodel)
    if not wrappers:
        raise ConfigError("export_int8_onnx: the model has no quantized layers; run quantize(..., method='static') first")
    if any(w.mode != "quantize" for w in wrappers.values()):
        raise ConfigError("export_int8_onnx: calibrate and freeze first (some layers are not in 'quantize' mode)")
    example = _inputs(example)
    notes: list[str] = []
    # `here`: the CPU whose ONNX Runtime kernels run the agreement check below
    built_for, here = resolve_target(_quantized_for(qmodel) if target == "auto" else target), detect_target()
    saturating = [n for n, w in wrappers.items() if can_saturate(weight_columns(w))]
    weight_dtype = "int8"
    if saturating and not TARGETS[built_for].u8s8_exact:
        weight_dtype = "uint8"
        notes.append(f"{len(saturating)} layer(s) have weights that can saturate the u8 x s8 pair sums of {built_for} "
                     "CPUs: written as uint8 weights with the same values (U8U8 kernels: exact, but about as slow as "
                     f"fp32); quantize with target={built_for!r} for 7-bit weights and fast exact kernels")
    if saturating and weight_dtype == "int8" and not TARGETS[here].u8s8_exact:
        notes.append(f"this CPU ({here}) sums u8 x s8 products in saturating int16: the agreement measured here "
                     f"understates the file on {built_for}, where the sums are exact")
    elif built_for != here:
        notes.append(f"built for {built_for}; checked in ONNX Runtime on this CPU ({here})")
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
        ref_file, fp32_kind = fp32_file, "bn_folded_twin"
        if reference is not None:  # the model the user had, as the fp32 file and the baseline
            ref_file, fp32_kind = work / "reference.onnx", "original"
            export_onnx(copy.deepcopy(reference).eval(), example, ref_file, opset=opset)
            ref_proto = onnx.load(str(ref_file))
            strip_metadata(ref_proto)
            onnx.save(ref_proto, str(ref_file))
        fp32_bytes = onnx_file_bytes(ref_file)

        layers = insert_qdq(proto, wrappers, activation_dtype, notes, weight_dtype=weight_dtype)
        exact = "all" if weight_dtype == "uint8" or not saturating else "u8s8-exact"
        onnx.helper.set_model_props(proto, {"condense.int8_target": built_for, "condense.int8_exact_on": exact})
        onnx.checker.check_model(proto)
        int8_file = work / "int8.onnx"
        onnx.save(proto, str(int8_file))

        # Checked in ORT before anything appears at `path`.
        optimized = work / "optimized.onnx"
        try:
            session = onnx_session(int8_file, threads, optimized_path=str(optimized))
        except Exception as e:  # ORT raises its own exception types
            raise RunError(f"ONNX Runtime cannot load the int8 model for {target}: {e}") from e
        ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node) if optimized.is_file() else Counter()
        float_ops = sum(ops[o] for o in FLOAT_COMPUTE_OPS)
        if float_ops:
            notes.append(f"{float_ops} Conv/Gemm/MatMul node(s) still run in float after ORT's QDQ fusion")
        x = _inputs(heldout) if heldout is not None else example
        agreement, max_diff = simulation_agreement(qmodel, session, x)
        latency = None
        if latency_batches:
            latency = ort_latency_comparison(int8_file, ref_file, example, batch_sizes=latency_batches, threads=threads)
            latency["fp32_reference"] = fp32_kind
            notes += latency["notes"]

        with atomic_path(target) as tmp:
            os.replace(int8_file, tmp)
        if fp32_path is not None:
            with atomic_path(fp32_path) as tmp:
                os.replace(ref_file, tmp)
            if fp32_kind == "bn_folded_twin":
                notes.append(f"{Path(fp32_path).name} is the quantized model's float twin (BatchNorm folded, biases "
                             "corrected, fake-quant off), not the original model: it can disagree with the original "
                             "on a few predictions (pass reference= to write the original)")
        size = onnx_file_bytes(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes.append(f"int8 file for {built_for} CPUs ({'uint8' if weight_dtype == 'uint8' else 'int8'} weights); "
                 f"agreement with the simulation measured with this CPU's ({here}) ONNX Runtime kernels: "
                 f"top-1 {agreement:.2f} %")
    qdq = Counter(n.op_type for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    return Int8ExportResult(
        path=target, bytes=size, fp32_bytes=fp32_bytes, size_ratio=size / fp32_bytes,
        fp32_path=None if fp32_path is None else Path(fp32_path), activation_dtype=activation_dtype,
        quantized_layers=layers, qdq_nodes=dict(qdq), ort_ops=dict(sorted(ops.items())),
        float_compute_ops=float_ops, checked_samples=len(x), top1_agreement=agreement,
        max_abs_diff=max_diff, notes=notes, latency=latency, target=built_for, weight_dtype=weight_dtype,
        checked_on=here, fp32_reference=fp32_kind,
    )


def _quantized_for(qmodel: nn.Module) -> str:
    """The target the model was statically quantized for (its edit log), else "auto"."""
    for edit in reversed(edit_log(qmodel)):
        if edit.get("kind") == "quantize_static":
            return str(edit["params"].get("config", {}).get("target", "auto"))
        if edit.get("kind") == "qat":
            return str(edit["params"].get("target", "auto"))
    return "auto"


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
    example: Any,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, Any]:
    """Median ORT latency of the int8 and fp32 files at each batch size (same threads, ORT_ENABLE_ALL).

    `example`: a tensor for a single-input model or a batch dict (`input_ids`, ...); its first
    sample is repeated to each batch size. The sessions run interleaved (`timed_pass`: measured
    again once when p90/p50 or the machine load says the first pass is unreliable).
    Returns {"threads", "batches": {bs: {"fp32_ms", "int8_ms", "int8_over_fp32", "reliable", ...}},
    "notes"}; a note says so in words wherever int8 is not faster than fp32 on this machine, or
    where the timing stayed unreliable (then no gain or loss is claimed).
    """
    if warmup < 1 or repeats < 3:
        raise ConfigError(f"ort_latency_comparison: warmup must be >= 1 and repeats >= 3, got {warmup}, {repeats}")
    threads = threads or os.cpu_count() or 1
    x1 = example if isinstance(example, dict) else _inputs(example)
    sessions = {"fp32": onnx_session(fp32_path, threads), "int8": onnx_session(int8_path, threads)}
    out: dict[str, Any] = {"threads": threads, "batches": {}, "notes": []}
    for i, bs in enumerate(batch_sizes):
        xb = repeat_batch(x1, int(bs))
        feeds = {kind: ort_input(sess, xb) for kind, sess in sessions.items()}
        runs = {kind: (lambda _f, s=sess, f=feeds[kind]: s.run(None, f)) for kind, sess in sessions.items()}
        res = timed_pass(runs, [None], reference="fp32", repeats=repeats, warmup=warmup, seed=i)
        t = res["timings"]
        row: dict[str, Any] = {f"{kind}_ms": v["wall_ms"] for kind, v in t.items()}
        row.update({f"{kind}_p90_ms": v["p90_ms"] for kind, v in t.items()})
        row["int8_over_fp32"] = row["int8_ms"] / row["fp32_ms"]
        row["reliable"] = res["reliable"]
        if not res["reliable"]:
            out["notes"].append(f"int8 vs fp32 latency at batch {bs} is unreliable after {res['measured']} passes ("
                                + "; ".join(res["reasons"]) + f"): {row['int8_over_fp32']:.2f}x, no gain or loss claimed")
        elif row["int8_over_fp32"] >= 1.0:
            out["notes"].append(f"int8 is NOT faster than fp32 at batch {bs} on this CPU "
                                f"({row['int8_ms']:.3f} ms vs {row['fp32_ms']:.3f} ms)")
        out["batches"][int(bs)] = row
    return out
