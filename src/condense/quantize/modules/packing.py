"""Bit packing: store 2..8-bit integers densely in uint8 tensors so bytes on disk really drop.

Layout (the same as ONNX INT4 / UINT4 and most int4 kernels): values are laid out in order and
the *first* value goes into the *lowest* bits. int4 packs two values per byte, int2 four per
byte, int8 one; 3-, 5-, 6- and 7-bit values are packed as a little-endian bit stream (value `i`
occupies bits `[i*b, (i+1)*b)` of the stream), so a 6-bit tensor takes 6/8 of a byte per value.

Signed values are stored in two's complement within their `bits` (e.g. int4 -1 -> 0b1111) and
sign-extended on unpack. `unpack(pack(x, b, signed), b, x.numel(), signed)` returns `x` exactly.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from condense.core.errors import ConfigError

__all__ = [
    "pack",
    "pack_rows",
    "packed_numel",
    "unpack",
    "unpack_rows",
    "pack_int2",
    "pack_int4",
    "unpack_int2",
    "unpack_int4",
    "int_range",
]


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"packing: bits must be an integer in 2..8, got {bits!r}")


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """The representable integer range `(qmin, qmax)` of a `bits`-wide integer."""
    _check_bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def packed_numel(numel: int, bits: int) -> int:
    """Bytes needed to pack `numel` values of `bits` bits."""
    _check_bits(bits)
    return math.ceil(numel * bits / 8)


def pack(values: Tensor, bits: int, signed: bool = False) -> Tensor:
    """Pack integer `values` (any shape, flattened in C order) into a 1-D uint8 tensor.

    Raises ConfigError when a value lies outside the `bits`-wide (signed or unsigned) range:
    silently wrapping would corrupt the weights.
    """
    return pack_rows(values.reshape(1, -1), bits, signed)[0]


def unpack(packed: Tensor, bits: int, numel: int, signed: bool = False) -> Tensor:
    """Inverse of `pack`: the first `numel` values, as int8 (signed) or uint8 (unsigned), 1-D."""
    return unpack_rows(packed.reshape(1, -1), bits, numel, signed)[0]


def pack_rows(values: Tensor, bits: int, signed: bool = False) -> Tensor:
    """Pack each row (the last dim) of an integer tensor separately: `(..., n) -> (..., ceil(n*bits/8))`.

    Rows stay byte-aligned, so a weight matrix packs to `(out_features, row_bytes)` and any row or
    block of rows can be unpacked on its own.
    """
    _check_bits(bits)
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.is_complex():
        raise ConfigError(f"packing: expected an integer tensor, got {values.dtype}")
    if values.dim() == 0:
        values = values.reshape(1)
    v = values.to(torch.int32)
    if v.numel():
        lo, hi = int_range(bits, signed)
        vmin, vmax = int(v.min()), int(v.max())
        if vmin < lo or vmax > hi:
            kind = "signed" if signed else "unsigned"
            raise ConfigError(
                f"packing: values [{vmin}, {vmax}] do not fit {kind} {bits}-bit range [{lo}, {hi}]"
            )
    lead, n = v.shape[:-1], v.shape[-1]
    u = (v & ((1 << bits) - 1)).to(torch.uint8)  # two's complement for signed values
    if bits == 8:
        return u.clone()
    nbytes = packed_numel(n, bits)
    if bits in (2, 4):
        per = 8 // bits
        pad = nbytes * per - n
        if pad:
            u = torch.cat([u, u.new_zeros(*lead, pad)], dim=-1)
        u = u.reshape(*lead, nbytes, per)
        out = torch.zeros(*lead, nbytes, dtype=torch.uint8, device=u.device)
        for i in range(per):
            out |= u[..., i] << (i * bits)
        return out
    # Generic little-endian bit stream for 3, 5, 6, 7 bits.
    shifts = torch.arange(bits, device=u.device, dtype=torch.uint8)
    stream = ((u.unsqueeze(-1) >> shifts) & 1).reshape(*lead, n * bits)
    pad = nbytes * 8 - n * bits
    if pad:
        stream = torch.cat([stream, stream.new_zeros(*lead, pad)], dim=-1)
    weights = 1 << torch.arange(8, device=u.device, dtype=torch.int32)
    stream = stream.reshape(*lead, nbytes, 8).to(torch.int32)
    return (stream * weights).sum(dim=-1).to(torch.uint8)


def unpack_rows(packed: Tensor, bits: int, numel: int, signed: bool = False) -> Tensor:
    """Inverse of `pack_rows`: `(..., row_bytes) -> (..., numel)` as int8 (signed) or uint8."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ConfigError(f"packing: packed data must be uint8, got {packed.dtype}")
    need = packed_numel(numel, bits)
    if packed.shape[-1] < need:
        raise ConfigError(
            f"packing: {packed.shape[-1]} bytes cannot hold {numel} values of {bits} bits (need {need})"
        )
    p = packed[..., :need]
    lead = p.shape[:-1]
    mask = (1 << bits) - 1
    if bits == 8:
        u = p.clone()
    elif bits in (2, 4):
        shifts = torch.arange(0, 8, bits, device=p.device, dtype=torch.uint8)
        u = ((p.unsqueeze(-1) >> shifts) & mask).reshape(*lead, -1)[..., :numel]
    else:
        bit_idx = torch.arange(8, device=p.device, dtype=torch.uint8)
        stream = ((p.unsqueeze(-1) >> bit_idx) & 1).reshape(*lead, -1)[..., : numel * bits]
        weights = 1 << torch.arange(bits, device=p.device, dtype=torch.int32)
        stream = stream.reshape(*lead, numel, bits).to(torch.int32)
        u = (stream * weights).sum(dim=-1).to(torch.uint8)
    if not signed:
        return u
    s = u.to(torch.int16)
    s = torch.where(s >= (1 << (bits - 1)), s - (1 << bits), s)
    return s.to(torch.int8)


def pack_int4(values: Tensor, signed: bool = True) -> Tensor:
    """Two 4-bit values per byte (first value in the low nibble)."""
    return pack(values, 4, signed)


def unpack_int4(packed: Tensor, numel: int, signed: bool = True) -> Tensor:
    return unpack(packed, 4, numel, signed)


def pack_int2(values: Tensor, signed: bool = True) -> Tensor:
    """Four 2-bit values per byte (first value in the lowest two bits)."""
    return pack(values, 2, signed)


def unpack_int2(packed: Tensor, numel: int, signed: bool = True) -> Tensor:
    return unpack(packed, 2, numel, signed)
