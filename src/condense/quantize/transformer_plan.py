"""`quantize(model, TransformerInt8Config(), calibration=...)` (method "transformer") and its export.

The handler checks the Hugging Face model and reads the calibration data once, and returns a float
copy carrying the plan (`attach_int8_plan`); `export_int8_onnx` sees the plan and calls
`export_planned_int8`, which writes the dynamic int8 ONNX file (`export_transformer_int8`) and
checks it against the fp32 export by cosine agreement on held-out inputs.
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

from torch import nn

from condense.core.cpu import detect_target, resolve_target
from condense.core.errors import ConfigError
from condense.export.onnx import onnx_session
from condense.quantize.attached import Int8Plan, attach_int8_plan, int8_plan_of
from condense.quantize.graph.onnx_int8 import (
    FLOAT_COMPUTE_OPS,
    PLAN_EXPORTERS,
    Int8ExportResult,
    ort_latency_comparison,
)
from condense.quantize.graph.transformer_graph import agreement, batches_of, output_rows
from condense.quantize.registry import QUANTIZERS, QuantMethod
from condense.quantize.transformer import (
    TransformerInt8Config,
    calibration_batches,
    check_hf_model,
    export_transformer_int8,
)


# -- the quantize() method and its export ------------------------------------------------------
@dataclasses.dataclass
class TransformerInt8Plan(Int8Plan):
    """Carried by the model `quantize(..., method "transformer")` returns; used by export_int8_onnx."""

    config: TransformerInt8Config
    calibration: list[dict[str, Any]] | None


def transformer_handler(model: nn.Module, config: TransformerInt8Config, calibration: Any) -> nn.Module:
    """`quantize()` entry: checks the model and reads the calibration data; returns a float copy
    carrying the plan (`attach_int8_plan`). The int8 model is the ONNX file `export_int8_onnx`
    writes from it: dynamic int8 runs in ONNX Runtime, not in PyTorch."""
    check_hf_model(model)
    batches = calibration_batches(config, calibration)
    return attach_int8_plan(copy.deepcopy(model).eval(), TransformerInt8Plan(config, batches))


def export_planned_int8(qmodel: nn.Module, example: Any, path: str | os.PathLike[str], *, heldout: Any = None,
                        fp32_path: str | os.PathLike[str] | None = None, threads: int | None = None,
                        latency_batches: Sequence[int] | None = None, target: str = "auto") -> Any:
    """`export_int8_onnx` for a model from `quantize(..., "transformer")`: the int8 file, checked
    against the fp32 export on `heldout` (cosine agreement), timed when `latency_batches` is given."""
    plan = int8_plan_of(qmodel)
    if not isinstance(plan, TransformerInt8Plan):
        raise ConfigError(f"export_planned_int8: the model carries {type(plan).__name__}, not a TransformerInt8Plan")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".check", dir=dest.parent))
    try:
        fp32 = Path(fp32_path) if fp32_path is not None else work / "fp32.onnx"
        cfg = plan.config if target == "auto" else dataclasses.replace(plan.config, target=target)
        res = export_transformer_int8(qmodel, dest, cfg, calibration=plan.calibration,
                                      example=example if isinstance(example, dict) else None, fp32_path=fp32)
        optimized = work / "optimized.onnx"
        s8, s32 = onnx_session(dest, threads, optimized_path=str(optimized)), onnx_session(fp32, threads)
        import onnx

        ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node) if optimized.is_file() else Counter()
        data = heldout if heldout is not None else (plan.calibration or example)
        batches = list(batches_of(data, 32, 512))
        quality = agreement(output_rows(s8, batches), output_rows(s32, batches))
        notes = list(res.notes)
        if "mean_cosine" in quality:
            notes.append(f"int8 vs fp32 ONNX on {quality['n']} held-out rows: mean cosine {quality['mean_cosine']:.5f}, "
                         f"min {quality['min_cosine']:.5f}")
        float_ops = sum(ops[o] for o in FLOAT_COMPUTE_OPS)
        latency = None
        if latency_batches:
            ex = next(iter(batches_of(example if isinstance(example, dict) else batches[0], 1, 1)))
            latency = ort_latency_comparison(dest, fp32, ex, batch_sizes=latency_batches, threads=threads)
            notes += latency["notes"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Int8ExportResult(
        path=dest, bytes=res.bytes, fp32_bytes=res.fp32_bytes, size_ratio=res.size_ratio,
        fp32_path=None if fp32_path is None else Path(fp32_path), activation_dtype="uint8 (dynamic, per batch)",
        quantized_layers=res.int8_layers,
        qdq_nodes={}, ort_ops=dict(sorted(ops.items())), float_compute_ops=float_ops,
        checked_samples=int(quality.get("n", 0)), top1_agreement=None, max_abs_diff=quality["max_abs_diff"],
        notes=notes, latency=latency, details={"transformer": res.to_dict(), "agreement": quality},
        target=cfg.target if cfg.target != "auto" else resolve_target("auto"), weight_dtype="int8",
        checked_on=detect_target())


QUANTIZERS.register("transformer", QuantMethod(TransformerInt8Config, transformer_handler, deploys="int8_dynamic"))


PLAN_EXPORTERS[TransformerInt8Plan] = export_planned_int8
