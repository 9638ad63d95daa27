"""Observers: watch tensors during ONE calibration pass, then propose a clipping range.

Each observer accumulates statistics with `observe(x)` (called once per batch) and answers
`range() -> (min, max)`: scalars per tensor, or shape [C] per channel along `spec.ch_axis` when
`spec.per_channel`. `qparams()` maps the range onto the spec's grid. The choice of range is the
whole difference between them (Nagel et al. 2021, "A White Paper on Neural Network
Quantization", sec. 3.4; Wu et al. 2020, "Integer Quantization for Deep Learning Inference"):

* "minmax"          the observed extremes (no clipping; outliers stretch the grid);
* "moving_average"  an exponential moving average of per-batch extremes (Jacob et al. 2018);
* "percentile"      the p-th / (100-p)-th percentiles from a running histogram;
* "mse"             the clipping range minimising the expected squared quantization error;
* "entropy"         the threshold minimising the KL divergence between the float histogram and
                    its quantized version (Migacz 2017, "8-bit Inference with TensorRT").

The histogram-based observers keep a fixed number of bins whose range grows as new data arrives
(old counts are re-binned), so calibration never stores the activations themselves.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from condense.core.errors import ConfigError, RunError
from condense.core.registry import Registry
from condense.quantize.modules.primitives import QuantSpec, compute_qparams

#: name -> observer class (constructor `(spec, **options)`).
OBSERVERS: Registry[Callable[..., Observer]] = Registry("observer")


def rows(x: Tensor, spec: QuantSpec) -> Tensor:
    """`x` as float32 [C, N]: one row per channel along `spec.ch_axis` (per-tensor: one row)."""
    x = x.detach().float()
    if spec.per_channel:
        if x.dim() == 0:
            raise ConfigError("per-channel observer got a scalar tensor")
        return x.movedim(spec.ch_axis % x.dim(), 0).reshape(x.shape[spec.ch_axis], -1)
    return x.reshape(1, -1)


class Observer:
    """Base class. Subclasses implement `_update(rows)` and `_range() -> (lo[C], hi[C])`."""

    name = "observer"

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.count = 0  # tensors observed
        self.channels: int | None = None

    def observe(self, x: Tensor) -> None:
        r = rows(x, self.spec)
        if r.shape[1] == 0:
            return
        if not torch.isfinite(r).all():
            raise RunError(f"{self.name} observer: the observed tensor holds NaN or inf values")
        if self.count and self.channels is not None and r.shape[0] != self.channels:
            raise RunError(f"{self.name} observer: {r.shape[0]} channels, earlier {self.channels}")
        self.channels = r.shape[0]
        self._update(r)
        self.count += 1

    def range(self) -> tuple[Tensor, Tensor]:
        if not self.count:
            raise RunError(f"{self.name} observer saw no data: run calibration before freezing")
        lo, hi = self._range()
        if not self.spec.per_channel:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    def qparams(self) -> tuple[Tensor, Tensor]:
        return compute_qparams(*self.range(), self.spec)

    def reset(self) -> None:
        self.count = 0
        self.channels = None
        self._reset()

    def _reset(self) -> None:
        raise NotImplementedError

    def _update(self, r: Tensor) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """Running minimum and maximum: no clipping at all."""

    name = "minmax"

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self._reset()

    def _reset(self) -> None:
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None

    def _update(self, r: Tensor) -> None:
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.min_val is not None and self.max_val is not None
        return self.min_val, self.max_val


@OBSERVERS.register("moving_average")
class MovingAverageObserver(MinMaxObserver):
    """EMA of per-batch extremes: `m <- m + c * (batch_min - m)` (the first batch sets `m`).

    Smooths out rare extreme batches (Jacob et al. 2018, sec. 3.1); `averaging_constant` c in (0, 1].
    """

    name = "moving_average"

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01) -> None:
        if not 0.0 < float(averaging_constant) <= 1.0:
            raise ConfigError(f"moving_average observer: averaging_constant must be in (0, 1], got {averaging_constant}")
        self.c = float(averaging_constant)
        super().__init__(spec)

    def _update(self, r: Tensor) -> None:
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.c * (lo - self.min_val)
            self.max_val = self.max_val + self.c * (hi - self.max_val)


class RunningHistogram:
    """Per-row histograms with `bins` equal bins over a range that grows with the data.

    When new data falls outside [lo, hi] the range is widened and the old counts move to the new
    bins holding their old bin centres (the approximation ONNX Runtime's and PyTorch's histogram
    calibrators make). `nonneg=True` keeps lo at 0 (histograms of |x|).
    """

    def __init__(self, bins: int = 2048, nonneg: bool = False) -> None:
        if int(bins) < 16:
            raise ConfigError(f"histogram observers need at least 16 bins, got {bins}")
        self.bins = int(bins)
        self.nonneg = nonneg
        self.counts: Tensor | None = None  # [C, bins] float64
        self.lo: Tensor | None = None  # [C]
        self.hi: Tensor | None = None  # [C]

    def update(self, r: Tensor) -> None:
        r = r.double()
        lo = torch.zeros(r.shape[0], dtype=torch.float64, device=r.device) if self.nonneg else r.amin(dim=1)
        hi = r.amax(dim=1)
        if self.counts is None or self.lo is None or self.hi is None:
            new_lo, new_hi = lo, hi
            counts = torch.zeros(r.shape[0], self.bins, dtype=torch.float64, device=r.device)
        else:
            new_lo, new_hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
            counts = self._rebin(self.counts, self.lo, self.hi, new_lo, new_hi)
        new_hi = torch.where(new_hi > new_lo, new_hi, new_lo + 1e-8)  # constant rows: tiny range
        idx = self._index(r, new_lo, new_hi)
        counts.scatter_add_(1, idx, torch.ones_like(r))
        self.counts, self.lo, self.hi = counts, new_lo, new_hi

    def _index(self, v: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        width = (hi - lo) / self.bins
        idx = torch.floor((v - lo[:, None]) / width[:, None])
        return idx.clamp(0, self.bins - 1).long()

    def _rebin(self, counts: Tensor, lo: Tensor, hi: Tensor, new_lo: Tensor, new_hi: Tensor) -> Tensor:
        if torch.equal(lo, new_lo) and torch.equal(hi, new_hi):
            return counts
        centers = self.centers(lo, hi)
        idx = self._index(centers, new_lo, torch.where(new_hi > new_lo, new_hi, new_lo + 1e-8))
        out = torch.zeros_like(counts)
        out.scatter_add_(1, idx, counts)
        return out

    def centers(self, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        assert lo is not None and hi is not None
        width = (hi - lo) / self.bins
        return lo[:, None] + (torch.arange(self.bins, dtype=torch.float64, device=lo.device)[None, :] + 0.5) * width[:, None]

    @property
    def width(self) -> Tensor:
        assert self.lo is not None and self.hi is not None
        return (self.hi - self.lo) / self.bins


class _HistogramObserver(Observer):
    def __init__(self, spec: QuantSpec, bins: int = 2048, nonneg: bool = False) -> None:
        super().__init__(spec)
        self._bins, self._nonneg = int(bins), nonneg
        self._reset()

    def _reset(self) -> None:
        self.hist = RunningHistogram(self._bins, nonneg=self._nonneg)
        self.min_val: Tensor | None = None
        self.max_val: Tensor | None = None

    def _update(self, r: Tensor) -> None:
        lo, hi = r.amin(dim=1), r.amax(dim=1)
        self.min_val = lo if self.min_val is None else torch.minimum(self.min_val, lo)
        self.max_val = hi if self.max_val is None else torch.maximum(self.max_val, hi)
        self.hist.update(r.abs() if self._nonneg else r)


@OBSERVERS.register("percentile")
class PercentileObserver(_HistogramObserver):
    """Clip at the `percentile`-th (upper) and (100 - percentile)-th (lower) percentiles.

    Read from a running histogram (`bins` bins), so the answer is exact to one bin width.
    """

    name = "percentile"

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < float(percentile) <= 100.0:
            raise ConfigError(f"percentile observer: percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)
        super().__init__(spec, bins)

    def _range(self) -> tuple[Tensor, Tensor]:
        h = self.hist
        assert h.counts is not None and h.lo is not None and self.min_val is not None and self.max_val is not None
        cdf = h.counts.cumsum(dim=1)
        total = cdf[:, -1:]
        q = self.percentile / 100.0
        upper_bin = (cdf < q * total).sum(dim=1).clamp(max=h.bins - 1)  # first bin with cdf >= q
        lower_bin = (cdf < (1.0 - q) * total).sum(dim=1).clamp(max=h.bins - 1)
        hi = h.lo + (upper_bin + 1).double() * h.width
        lo = h.lo + lower_bin.double() * h.width
        hi = torch.minimum(hi, self.max_val.double())
        lo = torch.maximum(lo, self.min_val.double())
        return lo.float(), hi.float()


def _clip_mse(centers: Tensor, counts: Tensor, lo: Tensor, hi: Tensor, spec: QuantSpec) -> Tensor:
    """Expected squared error per row of quantizing histogram data onto [lo, hi] (lo <= 0 <= hi).

    Values inside the range contribute uniform rounding noise scale^2 / 12; values outside add
    their squared distance to the range edge (clipping error).
    """
    scale, _ = compute_qparams(lo.float(), hi.float(), spec)
    scale = scale.double()
    clipped = torch.maximum(torch.minimum(centers, hi[:, None]), lo[:, None])
    err = counts * ((centers - clipped) ** 2 + (scale[:, None] ** 2) / 12.0)
    return err.sum(dim=1)


@OBSERVERS.register("mse")
class MSEObserver(_HistogramObserver):
    """Search the clipping range minimising quantization MSE (Banner et al. 2019; Nagel et al. 2021).

    Candidates shrink the observed [min, max] by factors in (0, 1] (`steps` of them); the expected
    error of each is computed on the running histogram (rounding noise + clipping error).
    """

    name = "mse"

    def __init__(self, spec: QuantSpec, steps: int = 100, bins: int = 2048) -> None:
        if int(steps) < 2:
            raise ConfigError(f"mse observer: steps must be >= 2, got {steps}")
        self.steps = int(steps)
        super().__init__(spec, bins)

    def _range(self) -> tuple[Tensor, Tensor]:
        h = self.hist
        assert h.counts is not None and self.min_val is not None and self.max_val is not None
        lo0 = torch.clamp(self.min_val.double(), max=0.0)
        hi0 = torch.clamp(self.max_val.double(), min=0.0)
        if self.spec.symmetric:
            amax = torch.maximum(-lo0, hi0)
            lo0, hi0 = -amax, amax
        centers = h.centers()
        best_err = torch.full_like(lo0, math.inf)
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for i in range(self.steps):
            alpha = 1.0 - i / self.steps  # 1.0 down to 1/steps
            lo, hi = lo0 * alpha, hi0 * alpha
            err = _clip_mse(centers, h.counts, lo, hi, self.spec)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
        lo = torch.maximum(best_lo, self.min_val.double())
        hi = torch.minimum(best_hi, self.max_val.double())
        return lo.float(), hi.float()


def _kl_thresholds(hist: Tensor, levels: int, start: int | None = None) -> Tensor:
    """KL(P || Q) for every threshold bin i in [levels, bins] (TensorRT calibration, Migacz 2017).

    P = hist[:i] with the mass beyond i added to bin i-1; Q = hist[:i] merged into `levels` groups
    and spread back uniformly over each group's non-empty bins of P. Computed in closed form from
    prefix sums, O(levels) per threshold:
    KL = (sum p log p - sum_g P_g log(Q_g)) / S_p - log S_p + log S_q, with P_g the mass of P in
    group g, Q_g = (hist mass of g) / (non-empty bins of g), S_p = sum p, S_q = sum hist[:i].
    Returns a [bins + 1] tensor (inf where not evaluated).
    """
    bins = hist.numel()
    start = levels if start is None else start
    out = torch.full((bins + 1,), math.inf, dtype=torch.float64)
    if bins < levels:
        out[bins] = 0.0
        return out
    h = hist.double().cpu()
    zero = torch.zeros(1, dtype=torch.float64)
    cum = torch.cat([zero, h.cumsum(0)])  # cum[k] = sum h[:k]
    nz = torch.cat([zero, (h > 0).double().cumsum(0)])
    hlogh = torch.cat([zero, torch.where(h > 0, h * torch.log(h.clamp(min=1e-300)), torch.zeros_like(h)).cumsum(0)])
    total = cum[-1]
    i = torch.arange(start, bins + 1)  # thresholds, in bins
    last = i - 1
    p_last = h[last] + (total - cum[i])  # bin i-1 plus every outlier
    j = torch.arange(levels + 1)
    edges = torch.div(j[None, :] * i[:, None] + levels - 1, levels, rounding_mode="floor")  # ceil(j*i/L)
    gsum = cum[edges[:, 1:]] - cum[edges[:, :-1]]  # hist mass per group [M, L]
    gcnt = nz[edges[:, 1:]] - nz[edges[:, :-1]]
    gp = gsum.clone()
    gp[:, -1] += total - cum[i]  # P's mass per group: outliers land in the last group
    gcnt[:, -1] += ((h[last] == 0) & (p_last > 0)).double()
    s_q = cum[i]
    q_g = torch.maximum(gsum / gcnt.clamp(min=1), 1e-12 * s_q[:, None])
    cross = torch.where(gp > 0, gp * torch.log(q_g), torch.zeros_like(gp)).sum(1)
    plogp = hlogh[last] + torch.where(p_last > 0, p_last * torch.log(p_last.clamp(min=1e-300)), torch.zeros_like(p_last))
    kl = (plogp - cross) / total - torch.log(total) + torch.log(s_q.clamp(min=1e-300))
    out[i] = kl
    return out


@OBSERVERS.register("entropy")
class EntropyObserver(_HistogramObserver):
    """Threshold T on |x| minimising KL divergence (Migacz 2017, "8-bit Inference with TensorRT").

    A 2048-bin histogram of |x| is compared with its quantized version for every candidate T
    from `levels` bins up to the full range; the range is then [max(min, -T), min(max, T)].
    `levels` is the number of grid steps covering one sign: 2^(b-1) for data with negatives,
    2^b for non-negative data on an unsigned / asymmetric grid.
    """

    name = "entropy"

    def __init__(self, spec: QuantSpec, bins: int = 2048) -> None:
        super().__init__(spec, bins, nonneg=True)

    def _range(self) -> tuple[Tensor, Tensor]:
        h = self.hist
        assert h.counts is not None and self.min_val is not None and self.max_val is not None
        lows, highs = [], []
        for c in range(h.counts.shape[0]):
            mn, mx = float(self.min_val[c]), float(self.max_val[c])
            one_sided = mn >= 0.0 and not (self.spec.symmetric and self.spec.signed)
            levels = self.spec.levels if one_sided else self.spec.levels // 2
            kl = _kl_thresholds(h.counts[c].cpu(), levels)
            best = int(torch.argmin(kl))
            threshold = float(h.width[c]) * best
            lows.append(max(mn, -threshold))
            highs.append(min(mx, threshold))
        return torch.tensor(lows, dtype=torch.float32), torch.tensor(highs, dtype=torch.float32)


def make_observer(name: str, spec: QuantSpec, /, **options: Any) -> Observer:
    """Build the observer registered as `name`; bad options are ConfigErrors naming the observer."""
    cls = OBSERVERS.get(name)
    try:
        return cls(spec, **options)
    except TypeError as e:
        raise ConfigError(f"observer {name!r}: bad options {options}: {e}") from None
