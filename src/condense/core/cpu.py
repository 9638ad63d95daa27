"""Which int8 kernels ONNX Runtime runs on a CPU, and the int8 scheme that is exact there.

ONNX Runtime's CPU kernels (MLAS) multiply uint8 activations by int8 weights (U8S8). How they add
the products depends on the instruction set:

* **x86 with VNNI** (AVX512-VNNI, AVX-VNNI): `vpdpbusd` adds four u8 x s8 products straight into
  int32. Exact.
* **x86 with AVX2 or AVX-512 but no VNNI**: `vpmaddubsw` adds each *pair* of adjacent products
  in int16 **with saturation**, then widens to int32. 255 x 127 x 2 = 64,770 does not fit in
  int16 (32,767), so a pair of large activations meeting a pair of large same-sign weights is
  clipped: the file then computes something other than the model that was calibrated. ORT's
  documentation names the two ways out: 7-bit weights (`reduce_range`: 255 x 63 x 2 = 32,130 fits)
  or uint8 weights (U8U8 kernels widen to 16 bits first and cannot saturate, but run about as
  slowly as fp32: benchmarks/quant_digits.py measures it).
* **arm64**: dot-product instructions (`sdot` / `udot`) or widening NEON multiplies, both
  accumulating in at least 32 bits. Exact.

condense therefore quantizes *for a target*: `"auto"` is the CPU it runs on (or the environment
variable `CONDENSE_INT8_TARGET`), and an explicit name builds for another machine. On a target
that saturates, static quantization stores 7-bit weights and dynamic quantization asks ORT for
`reduce_range`; an export whose weights could still saturate there (a model quantized for a VNNI
machine, exported for an AVX2 one) is written with uint8 weights of the same values instead.
`pair_sum_u8s8` is a small numpy reference of the saturating pair sum, so a test proves on any
machine which weights can or cannot saturate.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import platform
from typing import Any

import numpy as np

from condense.core.errors import ConfigError

ENV_VAR = "CONDENSE_INT8_TARGET"
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
U8_MAX = 255


@dataclasses.dataclass(frozen=True)
class Int8Target:
    """A CPU family as ONNX Runtime's int8 kernels see it."""

    name: str
    u8s8_exact: bool  # False: u8 x s8 products are summed in pairs in saturating int16
    description: str


TARGETS: dict[str, Int8Target] = {t.name: t for t in (
    Int8Target("avx512-vnni", True, "x86-64 with AVX512-VNNI (vpdpbusd: u8 x s8 products summed in int32)"),
    Int8Target("avx-vnni", True, "x86-64 with AVX-VNNI (vpdpbusd on 256-bit registers: summed in int32)"),
    Int8Target("avx512", False, "x86-64 with AVX-512 but no VNNI (vpmaddubsw: pairs of u8 x s8 products "
                                "summed in saturating int16)"),
    Int8Target("avx2", False, "x86-64 with AVX2 and no VNNI (vpmaddubsw: pairs of u8 x s8 products summed "
                              "in saturating int16)"),
    Int8Target("x86-64", False, "x86-64 without AVX2 (SSE4.1 pmaddubsw: saturating int16 pair sums)"),
    Int8Target("arm64", True, "arm64 (sdot / udot or widening NEON multiplies: summed in 32 bits)"),
)}
TARGET_NAMES = ("auto", *TARGETS)


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux /proc/cpuinfo `flags` or `Features`); empty
    where that file does not exist (macOS, Windows)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()  # noqa: SIM115
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name ('model name' in /proc/cpuinfo), else `platform.processor()`."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):  # noqa: SIM115
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def detect_target() -> str:
    """The int8 target of this CPU, from its architecture and feature flags (not the env variable)."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64") or machine.startswith("armv8"):
        return "arm64"
    flags = cpu_flags()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    if "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if machine in ("x86_64", "amd64", "i686", "i386", "x86"):
        return "x86-64"
    # Unknown architecture, or no flags to read (macOS / Windows on x86): assume the weakest x86.
    return "x86-64"


def resolve_target(target: str | None = "auto") -> str:
    """A target name: `target` itself, or for "auto" / None the `CONDENSE_INT8_TARGET` environment
    variable when set, else this CPU's (`detect_target`). Unknown names are a ConfigError."""
    name = "auto" if target is None else str(target)
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in TARGETS:
                raise ConfigError(f"environment variable {ENV_VAR}={env!r} is not an int8 target; expected one of "
                                  f"{', '.join(TARGETS)}")
            return env
        return detect_target()
    if name not in TARGETS:
        import difflib

        near = difflib.get_close_matches(name, TARGET_NAMES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"int8 target {name!r} is unknown{hint}; expected one of {', '.join(TARGET_NAMES)}")
    return name


def u8s8_exact(target: str | None = "auto") -> bool:
    """Whether u8 x s8 products are accumulated without saturation on `target`."""
    return TARGETS[resolve_target(target)].u8s8_exact


def max_weight_bits(target: str | None = "auto") -> int:
    """Widest weight grid whose u8 x s8 pair sums cannot saturate on `target` (7 without VNNI)."""
    return 8 if u8s8_exact(target) else 7


# -- the saturating pair sum, in numpy -------------------------------------------------------------
def pair_sum_u8s8(a: np.ndarray, w: np.ndarray, *, saturate: bool = True) -> np.ndarray:
    """`a @ w` as x86 `vpmaddubsw` + `vpmaddwd` compute it: a uint8 [..., K], w int8 [K, N].

    Adjacent products along K (k = 0,1 / 2,3 / ...) are summed in int16, clipped to
    [-32768, 32767] when `saturate` (what the instruction does), then all pair sums are added in
    int32. With `saturate=False` the result is the exact integer product.
    """
    a = np.asarray(a)
    w = np.asarray(w)
    if a.dtype != np.uint8 or w.dtype != np.int8:
        raise ConfigError(f"pair_sum_u8s8: needs uint8 activations and int8 weights, got {a.dtype} and {w.dtype}")
    k = a.shape[-1]
    if w.shape[0] != k:
        raise ConfigError(f"pair_sum_u8s8: K differs ({k} vs {w.shape[0]})")
    if k % 2:  # the kernels pad K with zeros to a whole pair
        a = np.concatenate([a, np.zeros((*a.shape[:-1], 1), np.uint8)], axis=-1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int8)], axis=0)
    prod = a.astype(np.int32)[..., :, None] * w.astype(np.int32)  # [..., K, N]
    pairs = prod[..., 0::2, :] + prod[..., 1::2, :]
    if saturate:
        pairs = np.clip(pairs, INT16_MIN, INT16_MAX)
    return pairs.sum(axis=-2, dtype=np.int64).astype(np.int32)


def worst_pair_sum(w: np.ndarray) -> tuple[int, int]:
    """(largest, smallest) sum of two uint8 x int8 products any pairing of `w`'s K rows can reach.

    `w`: int8 weights [K, N] (one column per output). Independent of how a kernel orders K
    (convolutions are packed in layouts of ORT's choosing), so it is a bound, not a simulation:
    the two largest positive weights of a column meeting two 255 activations, and likewise the
    two most negative.
    """
    w = np.asarray(w, dtype=np.int32)
    if w.ndim != 2 or w.shape[0] == 0:
        raise ConfigError(f"worst_pair_sum: weights must be [K, N] with K >= 1, got shape {w.shape}")
    pos = np.sort(np.clip(w, 0, None), axis=0)[::-1][:2].sum(axis=0)
    neg = np.sort(np.clip(w, None, 0), axis=0)[:2].sum(axis=0)
    return int(U8_MAX * pos.max()), int(U8_MAX * neg.min())


def can_saturate(w: np.ndarray) -> bool:
    """Whether uint8 activations times these int8 weights [K, N] can saturate a pair sum."""
    hi, lo = worst_pair_sum(w)
    return hi > INT16_MAX or lo < INT16_MIN


def cpu_record() -> dict[str, Any]:
    """What the numbers were measured on: for benchmark JSON files and reports."""
    flags = cpu_flags()
    shown = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                                             "fma", "f16c", "asimddp", "asimd", "i8mm", "sve"})
    return {"machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(), "flags": shown,
            "int8_target": detect_target(), "u8s8_exact": TARGETS[detect_target()].u8s8_exact}


def dynamic_int8_scheme(target: str | None, reduce_range: bool, weight_type: str) -> tuple[bool, str, str | None]:
    """(reduce_range, weight_type, note) for ONNX Runtime's dynamic int8 on `target`.

    Dynamic int8 quantizes activations to uint8 at run time and multiplies them by int8 weights,
    so on a target that saturates, full-range int8 weights are replaced by ORT's 7-bit weights
    (`reduce_range`). uint8 weights (`weight_type="quint8"`, U8U8) are also exact there; a user's
    explicit choice of either is kept. benchmarks/quant_minilm.py measures both.
    """
    if reduce_range or weight_type == "quint8" or u8s8_exact(target):
        return reduce_range, weight_type, None
    name = resolve_target(target)
    return True, weight_type, (f"int8 weights use 7 bits (reduce_range): {name} CPUs sum u8 x s8 products in "
                               "saturating int16, which full-range weights can overflow")
