"""Group-wise integer quantization math for weight-only low-bit layers (`weight_only.py`, `gptq.py`).

A weight (out, in) is cut into groups of `group_size` consecutive input features; each group gets
its own scale (rounded to the storage dtype, fp16 by default) and, when asymmetric, a zero point
(Frantar et al. 2022, GPTQ, arXiv:2210.17323; Dettmers & Zettlemoyer 2023, "The case for 4-bit
precision"). Round-to-nearest optionally searches a per-group clipping range by weight MSE.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from condense.core.errors import ConfigError
from condense.quantize.modules.packing import int_range
from condense.quantize.modules.primitives import quantize as quantize_tensor


def check_bits(bits: int, field: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"{field}: bits must be an integer in 2..8, got {bits!r}")


@dataclasses.dataclass
class QuantizedWeight:
    """Integer weight `q` (out, in), per-group `scales` (out, n_groups) and `zeros` (asym only)."""

    q: Tensor
    scales: Tensor
    zeros: Tensor | None
    bits: int
    group_size: int
    symmetric: bool

    def dequantize(self) -> Tensor:
        return dequantize_groups(self.q, self.scales, self.zeros, self.group_size)


def group_count(in_features: int, group_size: int) -> int:
    return 1 if group_size <= 0 else math.ceil(in_features / group_size)


def round_scale(scale: Tensor, scale_dtype: torch.dtype) -> Tensor:
    """Scales as they will be stored (fp16 rounding included), never zero."""
    tiny = torch.finfo(scale_dtype).smallest_normal if scale_dtype == torch.float32 else 2.0**-24
    return scale.clamp_min(tiny).to(scale_dtype).to(torch.float32)


def qparams_from_range(
    lo: Tensor, hi: Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    if symmetric:
        qmax = int_range(bits, True)[1]
        scale = round_scale(torch.maximum(lo.abs(), hi.abs()) / qmax, scale_dtype)
        return scale, torch.zeros_like(scale)
    qmax = (1 << bits) - 1
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # the range holds 0 so z is an integer in range
    scale = round_scale((hi - lo) / qmax, scale_dtype)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero


def fake_quantized(w: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    qmin, qmax = int_range(bits, symmetric)
    return (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero) * scale


def group_qparams(
    w: Tensor,
    bits: int,
    symmetric: bool = True,
    *,
    clip_search: bool = True,
    scale_dtype: torch.dtype = torch.float16,
    grid: int = 20,
    max_shrink: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Scale and zero point `(rows, 1)` for each row of `w` (one row = one group).

    With `clip_search`, the range is `[p*min, p*max]` for the `p` in `linspace(1, 1-max_shrink)`
    with the smallest squared rounding error per row (the "mse" option of the GPTQ reference
    code); clipping a few outliers buys finer steps for all other weights.
    """
    w = w.float()
    lo = w.min(dim=1, keepdim=True).values
    hi = w.max(dim=1, keepdim=True).values
    best_s, best_z = qparams_from_range(lo, hi, bits, symmetric, scale_dtype)
    if not clip_search:
        return best_s, best_z
    best_err = (fake_quantized(w, best_s, best_z, bits, symmetric) - w).pow(2).sum(1, keepdim=True)
    for p in torch.linspace(1.0, 1.0 - max_shrink, grid)[1:].tolist():
        s, z = qparams_from_range(lo * p, hi * p, bits, symmetric, scale_dtype)
        err = (fake_quantized(w, s, z, bits, symmetric) - w).pow(2).sum(1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def quantize_to_int(w: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Integers `clamp(round(w / s) + z)` in the signed (symmetric) or unsigned range."""
    qmin, qmax = int_range(bits, symmetric)
    return quantize_tensor(w, scale, zero, qmin, qmax).to(torch.int16)


def split_groups(w: Tensor, group_size: int) -> tuple[Tensor, int]:
    """(out, in) -> (out * n_groups, group) with zero padding of the last group."""
    out_f, in_f = w.shape
    if group_size <= 0:
        return w, in_f
    ng = group_count(in_f, group_size)
    pad = ng * group_size - in_f
    if pad:
        w = torch.cat([w, w.new_zeros(out_f, pad)], dim=1)
    return w.reshape(out_f * ng, group_size), group_size


def quantize_groups(
    w: Tensor,
    bits: int,
    group_size: int,
    symmetric: bool = True,
    *,
    clip_search: bool = True,
    scale_dtype: torch.dtype = torch.float16,
) -> QuantizedWeight:
    """Round-to-nearest group-wise quantization of a 2-D weight `(out, in)`."""
    check_bits(bits, "quantize_groups")
    w = w.detach().float()
    out_f, in_f = w.shape
    ng = group_count(in_f, group_size)
    g, glen = split_groups(w, group_size)
    if group_size > 0 and in_f % group_size:
        # Padding zeros must not widen the last group's range: fill them with a real value.
        last = g.view(out_f, ng, glen)[:, -1]
        valid = in_f - (ng - 1) * group_size
        last[:, valid:] = last[:, :1]
    scale, zero = group_qparams(g, bits, symmetric, clip_search=clip_search, scale_dtype=scale_dtype)
    q = quantize_to_int(g, scale, zero, bits, symmetric).reshape(out_f, ng * glen)[:, :in_f]
    scales = scale.reshape(out_f, ng).to(scale_dtype)
    zeros = None if symmetric else zero.reshape(out_f, ng).to(torch.int16)
    return QuantizedWeight(q.contiguous(), scales, zeros, bits, group_size, symmetric)


def dequantize_groups(q: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> Tensor:
    """Float weight `(q - z) * s` with each group's scale repeated over its columns."""
    in_f = q.shape[1]
    glen = in_f if group_size <= 0 else group_size
    s = scales.float().repeat_interleave(glen, dim=1)[:, :in_f]
    qf = q.float()
    if zeros is not None:
        qf = qf - zeros.float().repeat_interleave(glen, dim=1)[:, :in_f]
    return qf * s


def rtn_quantize(
    weight: Tensor,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    *,
    clip_search: bool = True,
    scale_dtype: torch.dtype = torch.float16,
) -> QuantizedWeight:
    """Round-to-nearest weight quantization (the baseline GPTQ improves on)."""
    return quantize_groups(
        weight, bits, group_size, symmetric, clip_search=clip_search, scale_dtype=scale_dtype
    )
