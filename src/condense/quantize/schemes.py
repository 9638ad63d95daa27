"""Measure the int8 encodings a CPU family can run, side by side: accuracy, agreement, bytes, latency.

On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels can saturate (`condense.core.cpu`).
Three static encodings exist; `compare_static_schemes` builds all three from one model and measures
each where it can:

* `w8-u8s8`: 8-bit weights, U8S8 kernels. Exact on VNNI / arm64; can saturate without VNNI.
* `w8-u8u8`: the same 8-bit weights stored as uint8 (zero point 128). Exact everywhere; U8U8
  kernels are slower.
* `w7-u8s8`: 7-bit weights, U8S8 kernels. Exact everywhere, fast kernels, coarser weights.
  `QuantizeConfig(target=...)` builds this one for a target without VNNI.

Accuracy and agreement with the PyTorch simulation are measured on this CPU's kernels and, where
QEMU is installed, on emulated AVX2 kernels (`condense.quantize.emulate`: exact outputs, no
timing). Latency is measured only on this CPU, against the fp32 file, interleaved; every row says
which CPU it was measured on. `compare_dynamic_schemes` does the same for ONNX Runtime's dynamic
int8 (int8 weights, reduce_range, uint8 weights) on a transformer, by cosine to the fp32 outputs.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from condense.core.cpu import cpu_record
from condense.evaluate.timing import interleaved_latency
from condense.export.onnx import onnx_session, ort_input
from condense.quantize import quantize
from condense.quantize.attached import quant_report_of
from condense.quantize.graph.emulate import agreement_of, can_emulate, input_name, run_emulated
from condense.quantize.graph.onnx_int8 import export_int8_onnx
from condense.quantize.graph.transformer_graph import (
    agreement,
    batches_of,
    output_rows,
    rows_of,
)
from condense.quantize.modules.ptq import QuantizeConfig
from condense.quantize.transformer import (
    TransformerInt8Config,
    TransformerWorkspace,
    calibration_batches,
)

STATIC_SCHEMES: dict[str, tuple[str, str]] = {
    # name: (quantize target, export target)
    "w8-u8s8": ("avx512-vnni", "avx512-vnni"),
    "w8-u8u8": ("avx512-vnni", "avx2"),
    "w7-u8s8": ("avx2", "avx2"),
}


def _accuracy(logits: np.ndarray, targets: torch.Tensor) -> float:
    return float(100.0 * (logits.argmax(-1) == targets.numpy()).mean())


def compare_static_schemes(
    model: nn.Module,
    calibration: Any,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: dict[str, Any] | None = None,
    batches: Sequence[int] = (1, 256),
    threads: int = 1,
    emulate: bool = True,
    folder: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Build every static int8 scheme of `model` and measure it (module docstring).

    `calibration`: data for `quantize`; `inputs` / `targets`: held-out samples; `config`: extra
    `QuantizeConfig` fields. Returns {"cpu": cpu_record(), "schemes": {name: row}} where a row has
    weight bits and dtype, simulation accuracy, ORT accuracy and agreement on this CPU, the same
    on emulated AVX2 (or None), bytes, and {batch: {fp32_ms, int8_ms, int8_over_fp32}}.
    """
    rows: dict[str, Any] = {}
    emulated = emulate and can_emulate("avx2")
    with tempfile.TemporaryDirectory(prefix="condense-schemes-") as tmp:
        work = Path(folder) if folder is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, (qtarget, etarget) in STATIC_SCHEMES.items():
            cfg = QuantizeConfig.from_dict({**(config or {}), "target": qtarget})
            q = quantize(model, cfg, calibration=calibration)
            res = export_int8_onnx(q, inputs[:1], work / f"{name}.onnx", heldout=inputs, target=etarget,
                                   fp32_path=work / "fp32.onnx", threads=threads, latency_batches=list(batches))
            with torch.no_grad():
                sim = torch.cat([q(xb) for xb in inputs.split(256)]).numpy()
            feeds = {input_name(res.path): inputs.numpy().astype(np.float32)}
            here = onnx_session(res.path, threads).run(None, feeds)[0]
            row: dict[str, Any] = {
                "weight_bits": sorted({w["weight_bits"] for w in quant_report_of(q).layers}),
                "weight_dtype": res.weight_dtype, "bytes": res.bytes, "fp32_bytes": res.fp32_bytes,
                "simulation_accuracy": _accuracy(sim, targets),
                "here": {"cpu": res.checked_on, "accuracy": _accuracy(here, targets),
                         "top1_agreement": res.top1_agreement, "max_abs_diff": res.max_abs_diff},
                "emulated_avx2": None,
                "latency": {str(b): v for b, v in (res.latency or {}).get("batches", {}).items()},
            }
            if emulated:
                emu = run_emulated(res.path, feeds, "avx2")
                row["emulated_avx2"] = {"accuracy": _accuracy(emu, targets), **agreement_of(emu, sim)}
            rows[name] = row
    return {"cpu": cpu_record(), "threads": threads, "emulated": "avx2 (qemu-x86_64 -cpu Haswell)" if emulated else None,
            "schemes": rows}


def compare_dynamic_schemes(
    model: nn.Module,
    calibration: Any,
    heldout: Any,
    *,
    config: dict[str, Any] | None = None,
    targets: Sequence[str] = ("avx512-vnni", "avx2"),
    batches: Sequence[int] = (1, 32),
    threads: int = 1,
    repeats: int = 50,
    emulate: bool = True,
    emulated_samples: int = 64,
) -> dict[str, Any]:
    """The transformer int8 file (`TransformerInt8Config`, ORT dynamic int8) built for each target
    (full-range int8 weights for VNNI, 7-bit `reduce_range` weights for AVX2), each measured by
    cosine to the fp32 ONNX outputs on this CPU and, for the first `emulated_samples` held-out
    rows, on emulated AVX2 kernels; latency on this CPU at `batches` (interleaved with fp32)."""
    cfgs = {t: TransformerInt8Config.from_dict({**(config or {}), "target": t}) for t in targets}
    emulated = emulate and can_emulate("avx2")
    evals = list(batches_of(heldout, 32))
    with tempfile.TemporaryDirectory(prefix="condense-dyn-schemes-") as tmp:
        ws = TransformerWorkspace(model, Path(tmp), calibration=calibration_batches(next(iter(cfgs.values())), calibration))
        built = {t: ws.build(c, Path(tmp) / f"{t}.onnx") for t, c in cfgs.items()}
        fp32 = ws.graph("plain")
        ref = output_rows(onnx_session(fp32, threads), evals)
        emu_batches = list(batches_of(heldout, 16, emulated_samples))
        emu_ref = output_rows(onnx_session(fp32, threads), emu_batches) if emulated else None
        sessions = {"fp32": onnx_session(fp32, threads), **{t: onnx_session(r.path, threads) for t, r in built.items()}}
        rows: dict[str, Any] = {}
        for t, res in built.items():
            row: dict[str, Any] = {"config": cfgs[t].to_dict(), "notes": res.notes, "bytes": res.bytes,
                                   "fp32_bytes": res.fp32_bytes,
                                   "here": {"cpu": cpu_record()["int8_target"],
                                            **agreement(output_rows(sessions[t], evals), ref)},
                                   "emulated_avx2": None, "latency": {}}
            if emulated:
                feeds = [ort_input(sessions[t], b) for b in emu_batches]
                outs = run_emulated(res.path, feeds, "avx2")
                got = np.concatenate([rows_of(o, b) for o, b in zip(outs, emu_batches, strict=True)])
                row["emulated_avx2"] = agreement(got, emu_ref)
            rows[t] = row
        for bs in batches:
            pool = list(batches_of(heldout, bs))[: max(1, 64 // bs)]
            feeds = [ort_input(sessions["fp32"], b) for b in pool]
            lat = interleaved_latency({k: (lambda f, s=s: s.run(None, f)) for k, s in sessions.items()}, feeds,
                                      repeats=repeats, warmup=2, seed=bs)
            for t in built:
                rows[t]["latency"][str(bs)] = {"fp32_ms": lat["fp32"]["wall_ms"], "int8_ms": lat[t]["wall_ms"],
                                               "int8_over_fp32": lat[t]["wall_ms"] / lat["fp32"]["wall_ms"]}
    return {"cpu": cpu_record(), "threads": threads, "emulated": "avx2 (qemu-x86_64 -cpu Haswell)" if emulated else None,
            "emulated_samples": emulated_samples if emulated else 0, "schemes": rows}


__all__ = ["STATIC_SCHEMES", "compare_dynamic_schemes", "compare_static_schemes"]
