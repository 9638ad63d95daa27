"""Dynamic int8: int8 weights, activations quantized on the fly per batch, for Linear-heavy models.

Two paths:

* PyTorch: `quantize_dynamic_torch` wraps `torch.ao.quantization.quantize_dynamic` (Linear ->
  `DynamicQuantizedLinear`, fbgemm/x86 kernels). In torch 2.13 it still exists and works but is
  deprecated (it warns that torch.ao.quantization moves to torchao); we silence that warning and
  raise RunError if a later torch has removed it.
* ONNX Runtime: `quantize_dynamic_onnx` (`quantize.graph.dynamic_onnx`, re-exported here) runs
  `onnxruntime.quantization.quantize_dynamic` on an fp32 ONNX file: MatMul -> DynamicQuantizeLinear + MatMulInteger (+ per-channel scale Mul),
  optionally Gather on constant tables (embeddings: uint8 table + DequantizeLinear) and Conv ->
  ConvInteger. ORT's dynamic mode has no Gemm handler of its own: it rewrites every Gemm into
  MatMul + Add first (`ONNXQuantizer.replace_gemm_with_matmul`), so "Gemm" here means "MatMul".

Dynamic quantization is not always faster: ORT's ConvInteger path on CPU can be several times
*slower* than fp32 Conv (measured on this project's machines), and small MatMuls gain little
because the per-batch DynamicQuantizeLinear costs as much as it saves. `measure_speedup` times
both files in ORT (median over repeats after warm-up), and `check_dynamic_speed` warns or, with
`refuse_slowdown=True`, raises RunError when int8 is slower than fp32.
(Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", for the integer arithmetic; ORT docs, "Quantize ONNX models", for the modes.)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from condense.core.config import Config
from condense.core.cpu import resolve_target
from condense.core.errors import ConfigError, RunError
from condense.core.linear import is_conv1d, linear_type_names, swap_conv1d
from condense.core.select import select_modules
from condense.export.onnx import export_onnx, onnx_file_bytes, onnx_session, ort_input, ort_run
from condense.quantize.graph.dynamic_onnx import DYNAMIC_OP_TYPES, quantize_dynamic_onnx
from condense.quantize.registry import QUANTIZERS, QuantMethod

__all__ = [
    "DYNAMIC_OP_TYPES",
    "DynamicConfig",
    "export_dynamic_int8",
    "check_dynamic_speed",
    "measure_speedup",
    "quantize_dynamic_onnx",
    "quantize_dynamic_torch",
]


@dataclasses.dataclass
class DynamicConfig(Config):
    """Dynamic int8 settings.

    `quantize(model, DynamicConfig())` runs the PyTorch path (targets / ignore select Linear
    layers). The ONNX fields (per_channel, op_types, reduce_range, weight_type, refuse_slowdown,
    max_ratio, threads) drive `export_dynamic_int8` / `quantize_dynamic_onnx`, the deployment path.
    """

    per_channel: bool = True
    op_types: list[str] = dataclasses.field(default_factory=lambda: ["MatMul", "Gemm"])
    reduce_range: bool = False
    weight_type: Literal["qint8", "quint8"] = "qint8"
    target: str = "auto"
    refuse_slowdown: bool = False
    max_ratio: float = 1.0
    threads: int | None = None
    targets: list[str] | None = None
    ignore: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        bad = [o for o in self.op_types if o not in DYNAMIC_OP_TYPES]
        if bad or not self.op_types:
            raise ConfigError(
                f"DynamicConfig.op_types: {bad or 'empty'} not supported; choose from {', '.join(DYNAMIC_OP_TYPES)}"
            )
        if self.max_ratio <= 0:
            raise ConfigError(f"DynamicConfig.max_ratio must be > 0, got {self.max_ratio}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"DynamicConfig.threads must be >= 1, got {self.threads}")
        if self.target != "auto":
            resolve_target(self.target)


# --------------------------------------------------------------------------------------------
# PyTorch path
# --------------------------------------------------------------------------------------------


def quantize_dynamic_torch(
    model: nn.Module, targets: Sequence[str] | None = None, ignore: Sequence[str] | None = None
) -> nn.Module:
    """A copy of `model` with the selected nn.Linear layers as torch dynamic-int8 Linear.

    transformers' Conv1D layers (GPT-2) count as Linear: in the copy they become bit-identical
    nn.Linear layers first (`condense.core.linear.as_linear`), then quantize like any Linear.
    Uses the deprecated-but-present `torch.ao.quantization.quantize_dynamic` (qint8 weights,
    per-tensor). The result runs only in PyTorch eager on CPU; for deployment prefer the ONNX path.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # pragma: no cover - depends on the torch version
        raise RunError(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: {e}") from e
    chosen = select_modules(model, targets, ignore, default=linear_type_names(model))
    names = {n for n, m in chosen.items() if type(m) is nn.Linear or is_conv1d(m)}
    skipped = sorted(set(chosen) - names)
    if skipped:
        warnings.warn(f"dynamic int8 (torch) skipped non-Linear modules: {', '.join(skipped)}", stacklevel=2)
    if not names:
        raise ConfigError("dynamic int8 (torch): no nn.Linear among the selected modules")
    model = copy.deepcopy(model).eval()
    swap_conv1d(model, sorted(n for n in names if is_conv1d(model.get_submodule(n))))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(model, names, dtype=torch.qint8)


def _session(path: str | os.PathLike[str], threads: int | None) -> Any:
    return onnx_session(path, threads=threads)


def _feed(session: Any, inputs: Any) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                for k, v in inputs.items()}
    return ort_input(session, inputs)


def _median_ms(session: Any, feed: dict[str, np.ndarray], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_speedup(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    inputs: Any,
    threads: int | None = None,
    *,
    repeats: int = 30,
    warmup: int = 5,
) -> dict[str, float]:
    """Median ORT latency of both files on the same inputs; `ratio` = int8 / fp32 (< 1 is faster).

    `inputs`: an array / tensor for a single-input model, or a `{input name: array}` mapping.
    The two sessions are timed in alternating rounds so machine noise hits both alike.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError("measure_speedup: repeats must be >= 1 and warmup >= 0")
    s32, s8 = _session(fp32_path, threads), _session(int8_path, threads)
    f32, f8 = _feed(s32, inputs), _feed(s8, inputs)
    rounds = 3
    per = max(1, repeats // rounds)
    t32, t8 = [], []
    for r in range(rounds):
        t32.append(_median_ms(s32, f32, per, warmup if r == 0 else 1))
        t8.append(_median_ms(s8, f8, per, warmup if r == 0 else 1))
    fp32_ms, int8_ms = statistics.median(t32), statistics.median(t8)
    return {
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "ratio": int8_ms / fp32_ms,
        "threads": float(threads or 0),
        "repeats": float(per * rounds),
    }


def check_dynamic_speed(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    inputs: Any,
    threads: int | None = None,
    *,
    refuse_slowdown: bool = False,
    max_ratio: float = 1.0,
    repeats: int = 30,
    warmup: int = 5,
) -> dict[str, float]:
    """Measure int8 vs fp32 in ORT and warn (or raise RunError with `refuse_slowdown`) on a slow-down.

    A slow-down is `int8_ms / fp32_ms > max_ratio`. Returns the `measure_speedup` numbers.
    """
    res = measure_speedup(fp32_path, int8_path, inputs, threads, repeats=repeats, warmup=warmup)
    if res["ratio"] > max_ratio:
        msg = (
            f"dynamic int8 is slower than fp32 on this CPU in onnxruntime: {res['int8_ms']:.3f} ms vs "
            f"{res['fp32_ms']:.3f} ms (int8/fp32 = {res['ratio']:.2f}x, threads={threads or 'default'}); "
            "dynamic quantization helps large MatMuls, not convolutions -- keep the fp32 model or "
            "use static (QDQ) int8"
        )
        if refuse_slowdown:
            raise RunError(msg)
        warnings.warn(msg, stacklevel=2)
    return res


def export_dynamic_int8(
    model: nn.Module,
    example: torch.Tensor,
    out_path: str | os.PathLike[str],
    config: DynamicConfig | None = None,
    *,
    check_speed: bool = True,
    keep_fp32: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """fp32 ONNX export (with parity check) -> ORT dynamic int8 at `out_path` -> speed check.

    Returns `{"path", "bytes", "fp32_bytes", "max_abs_diff" (int8 vs fp32 ORT on `example`),
    "speed" (measure_speedup numbers or None)}`. With `config.refuse_slowdown` a measured
    slow-down raises RunError and `out_path` is removed again; otherwise it is warned about.
    """
    cfg = config or DynamicConfig()
    with tempfile.TemporaryDirectory(prefix=".dyn-", dir=Path(out_path).parent if Path(out_path).parent.exists() else None) as tmp:
        fp32 = Path(keep_fp32) if keep_fp32 is not None else Path(tmp) / "model_fp32.onnx"
        export_onnx(model, example, fp32)
        out = quantize_dynamic_onnx(
            fp32, out_path, per_channel=cfg.per_channel, op_types=cfg.op_types,
            reduce_range=cfg.reduce_range, weight_type=cfg.weight_type, target=cfg.target,
        )
        s32, s8 = _session(fp32, cfg.threads), _session(out, cfg.threads)
        diff = float(np.abs(ort_run(s32, example) - ort_run(s8, example)).max())
        speed = None
        if check_speed:
            try:
                speed = check_dynamic_speed(
                    fp32, out, example, cfg.threads, refuse_slowdown=cfg.refuse_slowdown, max_ratio=cfg.max_ratio
                )
            except RunError:
                with contextlib.suppress(FileNotFoundError):
                    Path(out).unlink()
                raise
        return {
            "path": str(out),
            "bytes": onnx_file_bytes(out),
            "fp32_bytes": onnx_file_bytes(fp32),
            "max_abs_diff": diff,
            "speed": speed,
        }


def dynamic_handler(model: nn.Module, config: DynamicConfig, calibration: Any) -> nn.Module:
    """`quantize()` entry: the PyTorch dynamic-int8 path (calibration is not needed and ignored)."""
    return quantize_dynamic_torch(model, config.targets, config.ignore)


QUANTIZERS.register("dynamic", QuantMethod(DynamicConfig, dynamic_handler, deploys="int8_dynamic"))
