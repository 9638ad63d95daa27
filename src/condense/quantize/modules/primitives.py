"""Uniform affine quantization: integer grids, scale / zero-point, quantize, dequantize, fake-quant.

A real value x is represented as `q = clamp(round(x / scale) + zero_point, qmin, qmax)` and read
back as `(q - zero_point) * scale` (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference"; notation of Nagel et al. 2021, "A White
Paper on Neural Network Quantization"). Rounding is round-half-to-even and `x / scale` is a true
float32 division, exactly what ONNX `QuantizeLinear` does, so a model simulated here and the same
model run by ONNX Runtime see the same integers.

These functions are shared by every quantization method (static PTQ, QAT, weight-only, dynamic):
`QuantSpec` says what grid, `compute_qparams` maps an observed range onto it, and
`fake_quantize` simulates it in float with a straight-through-estimator gradient.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from condense.core.config import Config
from condense.core.errors import ConfigError

MIN_BITS = 2
MAX_BITS = 8


@dataclasses.dataclass
class QuantSpec(Config):
    """An integer grid: width, sign, symmetry and granularity.

    * `bits` in 2..8. `signed` grids are [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b-1].
    * `symmetric`: zero point fixed at 0 (signed) or mid-grid (unsigned) and the range is
      [-max|x|, max|x|]; asymmetric grids fit [min, max] exactly (zero always representable).
    * `narrow_range` (signed symmetric only) drops the most negative level (-127..127 for int8)
      so the grid is symmetric around 0, as ONNX Runtime and TensorRT do for weights.
    * `per_channel`: one scale per slice along `ch_axis` (output channels of a weight: axis 0).
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    ch_axis: int = 0
    signed: bool = True
    narrow_range: bool = False

    def validate(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"QuantSpec.bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        low = -(2 ** (self.bits - 1))
        return low + 1 if (self.symmetric and self.narrow_range) else low

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    @classmethod
    def weight(cls, bits: int = 8, per_channel: bool = True) -> QuantSpec:
        """Default weight grid: signed symmetric narrow-range, per output channel (axis 0)."""
        return cls(bits=bits, symmetric=True, per_channel=per_channel, ch_axis=0, signed=True,
                   narrow_range=True)

    @classmethod
    def activation(cls, bits: int = 8, symmetric: bool = False) -> QuantSpec:
        """Default activation grid: per-tensor, unsigned asymmetric (uint8), or signed symmetric."""
        return cls(bits=bits, symmetric=symmetric, per_channel=False, signed=symmetric)


def _eps() -> float:
    return float(torch.finfo(torch.float32).eps)


def compute_qparams(min_val: Tensor, max_val: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) mapping the range [min_val, max_val] onto `spec`'s grid.

    The range is first widened to include 0 (so zero padding and ReLU zeros are exact). Scales
    are float32 and > 0 (at least float32 eps, also for constant tensors); zero points are int32
    inside [qmin, qmax]; symmetric signed grids get zero point 0. Works elementwise, so
    per-channel ranges (shape [C]) give per-channel qparams.
    """
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    if min_val.shape != max_val.shape:
        raise ConfigError(f"compute_qparams: min shape {tuple(min_val.shape)} != max shape {tuple(max_val.shape)}")
    if not (torch.isfinite(min_val).all() and torch.isfinite(max_val).all()):
        raise ConfigError("compute_qparams: the observed range is not finite (NaN or inf in the data?)")
    lo = torch.minimum(min_val, torch.zeros_like(min_val))
    hi = torch.maximum(max_val, torch.zeros_like(max_val))
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        zp_value = 0 if spec.signed else (qmin + qmax + 1) // 2
        # the shorter side of the grid must still reach max|x| (no clipping at either end)
        scale = torch.clamp(amax / min(qmax - zp_value, zp_value - qmin), min=_eps())
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=_eps())
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale.to(torch.float32), zero_point


def _along(p: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """Shape a per-channel parameter to broadcast against `x` along `axis` (scalar: unchanged)."""
    if axis is None or p.dim() == 0:
        return p
    axis = axis % x.dim()
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Integers `clamp(round(x / scale) + zero_point, qmin, qmax)` as int32 (per-channel along `axis`)."""
    s = _along(torch.as_tensor(scale, dtype=torch.float32), x, axis)
    z = _along(torch.as_tensor(zero_point), x, axis)
    q = torch.round(x.float() / s) + z
    return torch.clamp(q, qmin, qmax).to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    """Float32 `(q - zero_point) * scale` (per-channel along `axis`)."""
    s = _along(torch.as_tensor(scale, dtype=torch.float32), q, axis)
    z = _along(torch.as_tensor(zero_point), q, axis)
    return (q.to(torch.int32) - z.to(torch.int32)).to(torch.float32) * s


class _FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize forward; straight-through estimator backward.

    The gradient w.r.t. x is 1 where `round(x / scale) + zero_point` falls inside [qmin, qmax]
    and 0 where the value is clamped (Bengio et al. 2013; Jacob et al. 2018 sec. 3).
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis):  # type: ignore[override]
        s = _along(scale, x, axis)
        z = _along(zero_point, x, axis).to(x.dtype)
        q = torch.round(x / s) + z
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(q, qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None, None


def fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """`dequantize(quantize(x))` in x's float dtype, differentiable by the straight-through estimator."""
    if qmin >= qmax:
        raise ConfigError(f"fake_quantize: qmin {qmin} must be < qmax {qmax}")
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    return _FakeQuantSTE.apply(x, scale, zero_point, int(qmin), int(qmax), axis)


def fake_quantize_spec(x: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """`fake_quantize` on `spec`'s grid (per-channel along `spec.ch_axis` when `spec.per_channel`)."""
    axis = spec.ch_axis if spec.per_channel else None
    return fake_quantize(x, scale, zero_point, spec.qmin, spec.qmax, axis)
