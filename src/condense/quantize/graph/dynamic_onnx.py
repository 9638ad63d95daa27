"""ONNX Runtime's dynamic int8 quantizer on an fp32 ONNX file (the graph half of `quantize.dynamic`).

`quantize_dynamic_onnx` runs `onnxruntime.quantization.quantize_dynamic`: MatMul ->
DynamicQuantizeLinear + MatMulInteger (+ per-channel scale Mul), optionally Gather on constant
tables (embeddings: uint8 table + DequantizeLinear) and Conv -> ConvInteger. ORT's dynamic mode has
no Gemm handler of its own: it rewrites every Gemm into MatMul + Add first
(`ONNXQuantizer.replace_gemm_with_matmul`), so "Gemm" here means "MatMul". The model-level path
(`export_dynamic_int8`, the speed check, the `quantize()` method) is `condense.quantize.dynamic`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from condense.core.cpu import dynamic_int8_scheme, resolve_target
from condense.core.errors import ConfigError, InputFileError, RunError
from condense.core.io import atomic_path

#: op types ORT's dynamic (IntegerOps) quantizer can handle; "Gemm" is accepted as an alias of
#: "MatMul" because ORT turns Gemm into MatMul + Add before quantizing in dynamic mode.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Gather", "Conv", "Attention", "LSTM", "EmbedLayerNormalization")



@contextlib.contextmanager
def quiet_ort_quantizer() -> Iterator[None]:
    """ORT's quantizer logs a 'consider pre-processing' warning on the root logger; hide it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)



def quantize_dynamic_onnx(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    per_channel: bool = True,
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    reduce_range: bool = False,
    weight_type: str = "qint8",
    nodes_to_exclude: Sequence[str] = (),
    extra_options: Mapping[str, Any] | None = None,
    target: str = "auto",
) -> Path:
    """Dynamic-int8 quantize an fp32 ONNX file with ONNX Runtime; write `out_path` atomically.

    op_types: which ops get int8 weights ("MatMul"/"Gemm" for Linear layers, "Gather" for
    embedding tables, "Conv" for convolutions -- often slower, see the module docstring).
    per_channel: one weight scale per output channel (recommended; per-tensor loses accuracy on
    layers with uneven rows). weight_type: "qint8" or "quint8". reduce_range: 7-bit weights,
    for CPUs without VNNI where u8*s8 products could saturate. extra_options: passed to ORT
    (e.g. {"MatMulConstBOnly": True}, the default for dynamic mode). target: the CPU family that
    will run the file ("auto": this one); on one that saturates, reduce_range is switched on
    unless uint8 weights were asked for (`condense.core.cpu.dynamic_int8_scheme`).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(fp32_path)
    if not src.is_file():
        raise InputFileError(f"ONNX file not found: {src}")
    bad = [o for o in op_types if o not in DYNAMIC_OP_TYPES]
    if bad or not op_types:
        raise ConfigError(
            f"quantize_dynamic_onnx: op_types {bad or list(op_types)} not supported; "
            f"choose from {', '.join(DYNAMIC_OP_TYPES)}"
        )
    if weight_type not in ("qint8", "quint8"):
        raise ConfigError(f"quantize_dynamic_onnx: weight_type must be 'qint8' or 'quint8', got {weight_type!r}")
    ops = sorted({"MatMul" if o == "Gemm" else o for o in op_types})
    built_for = resolve_target(target)
    reduce_range, weight_type, _ = dynamic_int8_scheme(built_for, reduce_range, weight_type)
    wt = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[weight_type]
    import onnx

    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise InputFileError(f"cannot read ONNX file {src}: {e}") from e
    # Stale shape annotations (the dynamo exporter writes one for every tensor) clash with ORT's
    # Gemm -> MatMul rewrite (it transposes B in place); ORT re-infers them anyway.
    del model.graph.value_info[:]
    dest = Path(out_path)
    with atomic_path(dest) as tmp:
        onnx_tmp = tmp.with_name(tmp.name + ".onnx")  # ORT wants to choose its own file name
        try:
            with quiet_ort_quantizer():
                quantize_dynamic(
                    model,
                    onnx_tmp,
                    op_types_to_quantize=ops,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=wt,
                    nodes_to_exclude=list(nodes_to_exclude),
                    extra_options=dict(extra_options or {}),
                )
            if not onnx_tmp.is_file():
                raise RunError(f"onnxruntime quantize_dynamic wrote no file for {src}")
            written = onnx.load(str(onnx_tmp), load_external_data=False)
            exact = "all" if reduce_range or weight_type == "quint8" else "u8s8-exact"
            onnx.helper.set_model_props(written, {"condense.int8_target": built_for,
                                                  "condense.int8_exact_on": exact})
            onnx.save(written, str(onnx_tmp))
            os.replace(onnx_tmp, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                onnx_tmp.unlink()
    return dest


