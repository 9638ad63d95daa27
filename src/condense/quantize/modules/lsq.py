"""LSQ: fake quantization with a learnable step size (Esser et al. 2020).

Esser, McKinstry, Bablani, Appuswamy & Modha 2020, "Learned Step Size Quantization" (ICLR,
arXiv:1902.08153). With integer bounds `-Qn..Qp` and step `s`:

    v_hat = round(clamp(v / s, -Qn, Qp)) * s
    d v_hat / d v = 1 if -Qn < v/s < Qp else 0                         (straight-through)
    d v_hat / d s = -v/s + round(v/s) if -Qn < v/s < Qp; -Qn below; Qp above
    the gradient reaching s is multiplied by g = 1 / sqrt(N * Qp)

where N is the number of elements one scale covers (weights of a channel or a layer; features of
one sample for activations). `s` starts at `2 * mean(|v|) / sqrt(Qp)` on the first batch seen.
Rounding is round-half-to-even (`torch.round`), as ONNX QuantizeLinear does, so the trained scales
carry over exactly to an int8 runtime. Zero points are 0: weights use the signed narrow grid
`[-(2^(b-1)-1), 2^(b-1)-1]` (symmetric, so per-channel BatchNorm folding is exact); activations use
`[0, 2^b-1]` when the first batch is non-negative (after ReLU) and `[-2^(b-1), 2^(b-1)-1]` otherwise.

With `learn_scale=False` the step is not learned but tracked (max |v| per channel for weights, an
exponential moving average of max |v| for activations), as in PyTorch's observer-based QAT;
`frozen=True` stops both the learning and the tracking (see `FreezeObserversCallback`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from condense.core.errors import ConfigError

__all__ = ["LSQFakeQuantize", "grad_scale", "lsq_fake_quantize", "round_pass"]


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """Identity forward; gradient multiplied by `scale` backward."""
    y_grad = x * scale
    return (x - y_grad).detach() + y_grad


def round_pass(x: Tensor) -> Tensor:
    """`round(x)` forward; identity gradient backward (straight-through estimator)."""
    return (torch.round(x) - x).detach() + x


def lsq_fake_quantize(x: Tensor, scale: Tensor, qn: int, qp: int, g: float, axis: int | None = None) -> Tensor:
    """LSQ quantize-dequantize of `x` with step `scale` (per-tensor, or per-channel along `axis`)."""
    s = grad_scale(scale, g)
    if axis is not None and s.dim() > 0:
        shape = [1] * x.dim()
        shape[axis] = -1
        s = s.reshape(shape)
    v = torch.clamp(x / s, -qn, qp)
    return round_pass(v) * s


class LSQFakeQuantize(nn.Module):
    """Fake-quantizer with a learnable step size (LSQ).

    kind "weight": signed narrow grid, one step per output channel (axis 0) when `per_channel`.
    kind "activation": per-tensor; unsigned or signed chosen from the first batch (buffer
    `signed`). State: parameter `scale`, buffers `zero_point` (always 0; kept for the same layout
    as the PTQ `FakeQuantize`), `initialized` and `signed`.
    """

    def __init__(
        self,
        bits: int,
        kind: str = "activation",
        *,
        per_channel: bool = False,
        num_channels: int | None = None,
        learn_scale: bool = True,
        ema: float = 0.01,
    ) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"LSQFakeQuantize: bits must be an integer in 2..8, got {bits!r}")
        if kind not in ("weight", "activation"):
            raise ConfigError(f"LSQFakeQuantize: kind must be 'weight' or 'activation', got {kind!r}")
        if per_channel and not num_channels:
            raise ConfigError("LSQFakeQuantize: per-channel quantization needs num_channels")
        if per_channel and kind == "activation":
            raise ConfigError("LSQFakeQuantize: activations are quantized per tensor")
        self.bits = bits
        self.kind = kind
        self.per_channel = per_channel
        self.learn_scale = learn_scale
        self.ema = ema
        self.frozen = False
        shape = (int(num_channels),) if per_channel else ()
        self.scale = nn.Parameter(torch.ones(shape), requires_grad=learn_scale)
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(kind == "weight"))

    # -- grid ------------------------------------------------------------------------------
    @property
    def qn(self) -> int:
        """Magnitude of the lowest level (levels are -qn..qp)."""
        if self.kind == "weight":
            return 2 ** (self.bits - 1) - 1
        return 2 ** (self.bits - 1) if bool(self.signed) else 0

    @property
    def qp(self) -> int:
        if self.kind == "weight" or bool(self.signed):
            return 2 ** (self.bits - 1) - 1
        return 2**self.bits - 1

    def _n_per_scale(self, x: Tensor) -> int:
        if self.per_channel:
            return max(1, x.numel() // x.shape[0])
        if self.kind == "activation" and x.dim() > 1:
            return max(1, x.numel() // x.shape[0])  # features of one sample
        return max(1, x.numel())

    def _reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        return tuple(range(1, x.dim())) if self.per_channel else tuple(range(x.dim()))

    # -- lifecycle -------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """LSQ init `s = 2 mean|x| / sqrt(Qp)` (observer mode: `max|x| / Qp`) and the grid's sign."""
        x = x.detach().float()
        if self.kind == "activation":
            self.signed.fill_(bool(x.numel()) and bool(x.min() < 0))
        if not x.numel():
            s = torch.ones_like(self.scale)
        elif self.learn_scale:
            s = 2.0 * x.abs().mean(dim=self._reduce_dims(x)) / math.sqrt(self.qp)
        else:  # observer mode starts from the observed range
            s = x.abs().amax(dim=self._reduce_dims(x)) / self.qp
        self.scale.data.copy_(s.clamp_min(1e-8).reshape(self.scale.shape))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _track(self, x: Tensor) -> None:
        """Observer mode (learn_scale=False): step from max |x| (weights) or its EMA (activations)."""
        x = x.detach().float()
        amax = x.abs().amax(dim=self._reduce_dims(x)) if x.numel() else self.scale * self.qp
        if self.kind == "activation" and not bool(self.signed) and x.numel() and x.min() < 0:
            self.signed.fill_(True)  # a negative value appeared: widen to the signed grid
        target = (amax / self.qp).clamp_min(1e-8).reshape(self.scale.shape)
        if self.kind == "activation":
            target = (1 - self.ema) * self.scale.data + self.ema * target
        self.scale.data.copy_(target)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or resume) learning / tracking the step size."""
        self.frozen = frozen
        self.scale.requires_grad_(self.learn_scale and not frozen)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        elif not self.learn_scale and not self.frozen and self.training:
            self._track(x)
        if self.learn_scale and not self.frozen:
            g = 1.0 / math.sqrt(self._n_per_scale(x) * self.qp)
        else:
            g = 1.0
        scale = self.scale.abs().clamp_min(1e-8) if self.learn_scale else self.scale.detach()
        if self.frozen:
            scale = scale.detach()
        return lsq_fake_quantize(x, scale.to(x.dtype), self.qn, self.qp, g, 0 if self.per_channel else None)

    def extra_repr(self) -> str:
        gran = "per_channel" if self.per_channel else "per_tensor"
        grid = f"[-{self.qn}, {self.qp}]"
        learn = "learned" if self.learn_scale else "tracked"
        return f"bits={self.bits}, {self.kind}, {gran}, q={grid}, scale {learn}, frozen={self.frozen}"
