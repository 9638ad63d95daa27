"""Fake-quant modules: simulate integer inference in float, without QuantStub / DeQuantStub.

`QuantWrapper` replaces a Conv / Linear layer in place. It fake-quantizes the layer's input
activation (per tensor), its weight (per output channel, symmetric int8 by default), its bias
(int32 with scale = input scale x weight scale, as integer kernels add it to the accumulator), and
optionally its output after a fused ReLU / ReLU6, exactly where an int8 runtime puts
QuantizeLinear / DequantizeLinear (Jacob et al. 2018; Nagel et al. 2021 sec. 2.3 and 4).

Lifecycle of every `FakeQuantize`: mode "observe" (an observer watches the tensor, output is
float) -> `freeze()` (observer range -> scale / zero point, stored as *buffers* so they are saved
and loaded with the weights) -> mode "quantize"; mode "off" passes the tensor through. Scales are
buffers here; learnable scales (LSQ) subclass `FakeQuantize` and make them parameters.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError, RunError
from condense.core.face import WrapperFace
from condense.quantize.modules.observers import make_observer
from condense.quantize.modules.primitives import QuantSpec, fake_quantize, fake_quantize_spec

Mode = Literal["observe", "quantize", "off"]
MODES = ("observe", "quantize", "off")

#: Layer types with a quantized form here (an integer kernel in ONNX Runtime).
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
#: Activations a wrapper can absorb (fused into the layer's output quantization).
FUSABLE_ACTS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6"}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"fake-quant mode must be one of {', '.join(MODES)}, got {mode!r}")


class FakeQuantize(nn.Module):
    """Observe a tensor, then fake-quantize it with frozen qparams (buffers `scale`, `zero_point`)."""

    def __init__(
        self,
        spec: QuantSpec,
        observer: str = "minmax",
        observer_options: dict[str, Any] | None = None,
        num_channels: int | None = None,
    ) -> None:
        super().__init__()
        if spec.per_channel and not num_channels:
            raise ConfigError("a per-channel FakeQuantize needs num_channels")
        self.spec = spec
        self.observer_name = observer
        self.observer_options = dict(observer_options or {})
        self.observer = make_observer(observer, spec, **self.observer_options)
        shape = (int(num_channels),) if spec.per_channel and num_channels else ()
        self.register_buffer("scale", torch.ones(shape, dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.mode: str = "observe"

    def set_mode(self, mode: str) -> None:
        _check_mode(mode)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "observe":
            self.observer.observe(x)
            return x
        if self.mode == "quantize":
            return fake_quantize_spec(x, self.scale, self.zero_point, self.spec)
        return x

    @torch.no_grad()
    def freeze(self) -> None:
        """Observer range -> qparams buffers; switch to "quantize"; drop the observer's statistics."""
        scale, zp = self.observer.qparams()
        if scale.shape != self.scale.shape:
            raise RunError(f"observer gave qparams of shape {tuple(scale.shape)}, expected {tuple(self.scale.shape)}")
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self.observer.reset()
        self.mode = "quantize"

    def extra_repr(self) -> str:
        s = self.spec
        gran = f"per_channel(axis={s.ch_axis})" if s.per_channel else "per_tensor"
        kind = "symmetric" if s.symmetric else "asymmetric"
        return f"bits={s.bits}, {kind}, {gran}, q=[{s.qmin}, {s.qmax}], observer={self.observer_name}, mode={self.mode}"


class QuantWrapper(WrapperFace, nn.Module):
    """A Conv1d / Conv2d / Linear run on fake-quantized input, weight, bias (and output).

    The wrapped layer stays at `.module` (its weight and bias keep their names under it).
    `act` ("relu" / "relu6") is an activation absorbed from the layer that followed, applied
    before the output quantizer so the output grid starts at 0 (and an int8 runtime can drop the
    ReLU). With `collect_input_mean`, calibration also records the mean input for bias correction.
    It keeps the wrapped layer's face (`weight`, `bias`, `in_features`, `stride`, ... read through
    to `.module`: see `condense.core.face`).
    """

    def __init__(
        self,
        module: nn.Module,
        weight_spec: QuantSpec,
        act_spec: QuantSpec,
        *,
        observer: str = "minmax",
        observer_options: dict[str, Any] | None = None,
        weight_observer: str = "minmax",
        act: str | None = None,
        quantize_output: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(module, SUPPORTED_TYPES):
            raise ConfigError(f"QuantWrapper: {type(module).__name__} has no quantized form here")
        if act not in (None, "relu", "relu6"):
            raise ConfigError(f"QuantWrapper: act must be None, 'relu' or 'relu6', got {act!r}")
        if weight_spec.per_channel and weight_spec.ch_axis != 0:
            raise ConfigError("QuantWrapper: per-channel weight scales must be along axis 0 (output channels)")
        self.module = module
        self.act = act
        self.input_fq = FakeQuantize(act_spec, observer, observer_options)
        self.weight_fq = FakeQuantize(weight_spec, weight_observer, num_channels=module.weight.shape[0])
        self.output_fq = FakeQuantize(act_spec, observer, observer_options) if quantize_output else None
        self.mode: str = "observe"
        self.weight_fq.set_mode("off")
        self.collect_input_mean = False
        self._in_sum: Tensor | None = None
        self._in_count = 0
        self._block_fused_fastpath()

    # -- lifecycle -------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        _check_mode(mode)
        self.mode = mode
        self.input_fq.set_mode(mode)
        if self.output_fq is not None:
            self.output_fq.set_mode(mode)
        self.weight_fq.set_mode("quantize" if mode == "quantize" else "off")

    @torch.no_grad()
    def freeze(self) -> None:
        """Activation observers -> qparams; weight qparams from the weight itself; mode "quantize"."""
        if self.input_fq.observer.count == 0:
            raise RunError("QuantWrapper.freeze: this layer was never run during calibration")
        self.input_fq.freeze()
        if self.output_fq is not None:
            self.output_fq.freeze()
        self.weight_fq.observer.reset()
        self.weight_fq.observer.observe(self.module.weight)
        self.weight_fq.freeze()
        self.set_mode("quantize")

    def input_mean(self) -> Tensor | None:
        """Mean calibration input (over the batch; kept per position) or None if not collected."""
        return None if self._in_sum is None or not self._in_count else self._in_sum / self._in_count

    def clear_input_mean(self) -> None:
        self._in_sum, self._in_count = None, 0

    # -- quantized tensors -----------------------------------------------------------------
    def quantized_weight(self) -> Tensor:
        return fake_quantize_spec(self.module.weight, self.weight_fq.scale, self.weight_fq.zero_point, self.weight_fq.spec)

    def bias_scale(self) -> Tensor:
        """Per-output-channel scale of the int32 bias: input scale x weight scale (float32)."""
        return (self.input_fq.scale * self.weight_fq.scale).to(torch.float32)

    def quantized_bias(self) -> Tensor | None:
        b = self.module.bias
        if b is None:
            return None
        scale = self.bias_scale().expand_as(b)
        return fake_quantize(b, scale, torch.zeros_like(scale, dtype=torch.int32), INT32_MIN, INT32_MAX, axis=0)

    # -- forward ---------------------------------------------------------------------------
    def _layer(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if isinstance(self.module, nn.Linear):
            return F.linear(x, w, b)
        return self.module._conv_forward(x, w, b)  # Conv1d / Conv2d (handles padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "observe" and self.collect_input_mean:
            self._accumulate_input(x)
        x = self.input_fq(x)
        if self.mode == "quantize":
            y = self._layer(x, self.quantized_weight(), self.quantized_bias())
        else:
            y = self._layer(x, self.module.weight, self.module.bias)
        if self.act == "relu":
            y = F.relu(y)
        elif self.act == "relu6":
            y = F.relu6(y)
        if self.output_fq is not None:
            y = self.output_fq(y)
        return y

    @torch.no_grad()
    def _accumulate_input(self, x: Tensor) -> None:
        x = x.detach().float()
        if isinstance(self.module, nn.Linear):
            s, n = x.reshape(-1, x.shape[-1]).sum(0), x.reshape(-1, x.shape[-1]).shape[0]
        else:
            s, n = x.sum(0), x.shape[0]
        if self._in_sum is not None and self._in_sum.shape != s.shape:
            # The spatial size changed between batches: keep per-channel means from here on.
            self._in_sum, s = _channel_sum(self._in_sum), _channel_sum(s)
        self._in_sum = s if self._in_sum is None else self._in_sum + s
        self._in_count += n

    def extra_repr(self) -> str:
        return f"act={self.act}, mode={self.mode}"


def quant_wrappers(model: nn.Module) -> dict[str, QuantWrapper]:
    """`{qualified name: QuantWrapper}` in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}


def set_quant_mode(model: nn.Module, mode: str) -> None:
    """Set every wrapper (and stand-alone FakeQuantize) in `model` to `mode`."""
    _check_mode(mode)
    owned: set[int] = set()
    for m in model.modules():
        if isinstance(m, QuantWrapper):
            m.set_mode(mode)
            owned.update(id(c) for c in m.children())
    for m in model.modules():
        if isinstance(m, FakeQuantize) and id(m) not in owned:
            m.set_mode(mode)


def _channel_sum(t: Tensor) -> Tensor:
    """[C, *spatial] sum over the batch -> [C] (averaged over positions); [C] unchanged."""
    return t.mean(dim=tuple(range(1, t.dim()))) if t.dim() > 1 else t



