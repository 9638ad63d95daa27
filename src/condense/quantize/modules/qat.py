"""Quantization-aware training (QAT) with learned step sizes, observer freezing and BN folding.

`prepare_qat(model, QATConfig)` returns a copy whose selected Conv1d / Conv2d / Linear layers are
`QATWrapper`s: the input activation (per tensor) and the weight (per output channel) pass through
`LSQFakeQuantize` (Esser et al. 2020, "Learned Step Size Quantization", see `lsq.py`); the bias is
fake-quantized to int32 with scale `s_in * s_w` as an integer kernel adds it. Train it with the one
`fit()` loop (any task: supervised, or distillation from the float model as teacher), with two
schedule callbacks:

* `FreezeObserversCallback(at_epoch=... | at_step=...)`: from then on the step sizes stop being
  learned (LSQ) or tracked (observer mode); the weights keep training on a fixed grid.
* `FreezeBatchNormCallback(at_epoch=...)`: BatchNorm layers go to eval mode -- running statistics
  stop updating and normalisation uses them, as at deployment (Jacob et al. 2018 sec. 3.2;
  Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference", sec. 3.2).

BatchNorm folding happens at convert time, not during training: `convert_qat` folds each BN into
the layer before it (`W' = W * f`, `b' = (b - mean) * f + beta`, `f = gamma / sqrt(var + eps)`)
and multiplies that layer's per-channel weight step by `|f|`. Because the weight grid is symmetric
per output channel with zero point 0 (and round-half-even is odd-symmetric), `Q(W * f) = f * Q(W)`
exactly, so the folded integer model computes what the QAT model computed in eval mode. Freeze BN
some epochs before the end so the weights adapt to the running statistics they will be folded with.

`convert_qat(model, example)` returns the same `QuantWrapper` layers (with `FakeQuantize` scale /
zero-point buffers, mode "quantize") that static PTQ produces, so the QDQ ONNX exporter handles
both. Module swaps are logged ("qat", "fold_bn", "qat_convert") so `load()` can rebuild either the
in-training or the converted model before loading weights strictly.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.config import Config
from condense.core.cpu import max_weight_bits, resolve_target
from condense.core.errors import ConfigError
from condense.core.face import WrapperFace
from condense.core.linear import is_conv1d
from condense.core.select import select_modules
from condense.models.edits import EDITS, record_conv1d_swap, record_edit
from condense.quantize.modules.fake_quant import INT32_MAX, INT32_MIN, QuantWrapper
from condense.quantize.modules.gptq import calibration_batches, run_batch
from condense.quantize.modules.lsq import LSQFakeQuantize
from condense.quantize.modules.primitives import fake_quantize
from condense.quantize.registry import QUANTIZERS, QuantMethod
from condense.train.callbacks import Callback, FitState

__all__ = [
    "FreezeBatchNormCallback",
    "FreezeObserversCallback",
    "QATConfig",
    "QATWrapper",
    "freeze_batchnorm",
    "freeze_qat_scales",
    "prepare_qat",
]

QAT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _check_bits(value: int | None, field: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not 2 <= value <= 8:
        raise ConfigError(f"QATConfig.{field} must be in 2..8, got {value}")


@dataclasses.dataclass
class QATConfig(Config):
    """QAT settings.

    bits: weight bits (2..8). act_bits: activation bits. first_last_bits: bits (weights and
    activations) of the first and last selected layers in module order (None: same as the rest).
    quantize_activations: False trains weight-only QAT. learn_scales: LSQ (True) or observer-style
    tracked steps (False). per_channel: one weight step per output channel. targets / ignore: the
    layer-selection language (default Conv1d, Conv2d, Linear). target: the CPU family the int8
    file will run on (`condense.core.cpu`; "auto": this one); without VNNI, weights are capped
    at 7 bits so ONNX Runtime's u8 x s8 kernels cannot saturate.

    The training schedule `qat_fit` runs (the `quantize` recipe stage and `condense quantize
    --method qat`): distill: learn from the float model (Hinton KD, `alpha` * soft targets at
    `temperature` + (1 - alpha) * labels) rather than from the labels alone; freeze_bn_epoch:
    the 0-based epoch from which BatchNorm statistics are fixed (None: half-way);
    freeze_steps_epoch: from which the step sizes are fixed (None: the last epoch when there
    are two or more). `prepare_qat` itself reads only the fields above.
    """

    bits: int = 4
    act_bits: int = 8
    first_last_bits: int | None = 8
    quantize_activations: bool = True
    learn_scales: bool = True
    per_channel: bool = True
    targets: list[str] | None = None
    ignore: list[str] = dataclasses.field(default_factory=list)
    distill: bool = True
    alpha: float = 0.9
    temperature: float = 4.0
    freeze_bn_epoch: int | None = None
    freeze_steps_epoch: int | None = None
    target: str = "auto"

    def validate(self) -> None:
        if self.target != "auto":
            resolve_target(self.target)
        _check_bits(self.bits, "bits")
        _check_bits(self.act_bits, "act_bits")
        _check_bits(self.first_last_bits, "first_last_bits")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"QATConfig.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"QATConfig.temperature must be > 0, got {self.temperature}")
        for field in ("freeze_bn_epoch", "freeze_steps_epoch"):
            v = getattr(self, field)
            if v is not None and (isinstance(v, bool) or v < 0):
                raise ConfigError(f"QATConfig.{field} must be >= 0 (a 0-based epoch) or null, got {v}")


class QATWrapper(WrapperFace, nn.Module):
    """A Conv / Linear layer trained on LSQ fake-quantized input, weight and (int32) bias.

    The float layer stays at `.module`; the quantizers are `.input_fq` (None when activations are
    not quantized) and `.weight_fq` -- the same attribute names as the PTQ `QuantWrapper`. It keeps
    the wrapped layer's face (`weight`, `stride`, ... read through to `.module`; `condense.core.face`).
    """

    def __init__(
        self,
        module: nn.Module,
        bits: int,
        act_bits: int | None,
        *,
        learn_scales: bool = True,
        per_channel: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(module, QAT_TYPES):
            raise ConfigError(f"QATWrapper: {type(module).__name__} has no quantized form")
        self.module = module
        self.bits = bits
        self.act_bits = act_bits
        self.input_fq = (
            LSQFakeQuantize(act_bits, "activation", learn_scale=learn_scales) if act_bits else None
        )
        self.weight_fq = LSQFakeQuantize(
            bits, "weight", per_channel=per_channel,
            num_channels=module.weight.shape[0] if per_channel else None, learn_scale=learn_scales,
        )
        self._block_fused_fastpath()

    def quantized_weight(self) -> Tensor:
        return self.weight_fq(self.module.weight)

    def quantized_bias(self) -> Tensor | None:
        b = self.module.bias
        if b is None or self.input_fq is None:
            return b
        scale = (self.input_fq.scale.detach().abs() * self.weight_fq.scale.detach().abs()).expand_as(b)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return fake_quantize(b, scale.clamp_min(1e-12), zero, INT32_MIN, INT32_MAX, axis=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_fq is not None:
            x = self.input_fq(x)
        w, b = self.quantized_weight(), self.quantized_bias()
        if isinstance(self.module, nn.Linear):
            return F.linear(x, w, b)
        return self.module._conv_forward(x, w, b)

    def spec(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "act_bits": self.act_bits,
            "learn_scales": self.weight_fq.learn_scale,
            "per_channel": self.weight_fq.per_channel,
        }

    def extra_repr(self) -> str:
        return f"bits={self.bits}, act_bits={self.act_bits}"


def qat_wrappers(model: nn.Module) -> dict[str, QATWrapper]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QATWrapper)}


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def prepare_qat(model: nn.Module, config: QATConfig | None = None, calibration: Any = None) -> nn.Module:
    """A copy of `model` with the selected layers wrapped for QAT (the caller's model is untouched).

    Step sizes are initialised on the first batch seen; pass `calibration` (a tensor or batches)
    to initialise them from one batch right away (deterministic, and before the optimizer's
    first step).
    """
    config = config or QATConfig()
    was_training = model.training
    model = copy.deepcopy(model)
    targets = config.targets
    if targets is None:
        targets = [t.__name__ for t in QAT_TYPES if any(type(m) is t for m in model.modules())]
        if any(is_conv1d(m) for m in model.modules()):
            targets.append("Conv1D")  # transformers' Conv1D (GPT-2): swapped for an nn.Linear
        if not targets:
            raise ConfigError("prepare_qat: the model has no Conv1d / Conv2d / Linear layer")
    chosen = select_modules(model, targets, config.ignore)
    ignored = set(select_modules(model, config.ignore, None, field="ignore")) if config.ignore else set()
    names: list[str] = []
    skipped: list[str] = []
    for n, m in chosen.items():
        if isinstance(m, (QATWrapper, QuantWrapper)) or any(n.startswith(p + ".") for p in names):
            continue
        if type(m) in QAT_TYPES or is_conv1d(m):
            names.append(n)
        elif any(True for _ in m.children()):  # a selected container: its supported layers
            names += [f"{n}.{c}" for c, sub in m.named_modules()
                      if c and (type(sub) in QAT_TYPES or is_conv1d(sub)) and f"{n}.{c}" not in ignored]
        else:
            skipped.append(n)
    names = list(dict.fromkeys(names))
    if skipped:
        warnings.warn(
            "QAT skipped modules with no quantized form: "
            + ", ".join(f"{n} ({type(chosen[n]).__name__})" for n in skipped),
            stacklevel=2,
        )
    if not names:
        raise ConfigError("prepare_qat: no Conv1d / Conv2d / Linear among the selected modules")
    record_conv1d_swap(model, [n for n in names if is_conv1d(model.get_submodule(n))])
    layers: dict[str, dict[str, Any]] = {}
    target = resolve_target(config.target)
    for i, n in enumerate(names):
        edge = config.first_last_bits is not None and i in (0, len(names) - 1)
        bits = min(max_weight_bits(target), config.first_last_bits if edge else config.bits)
        act_bits = (config.first_last_bits if edge else config.act_bits) if config.quantize_activations else None
        w = QATWrapper(model.get_submodule(n), bits, act_bits, learn_scales=config.learn_scales,
                       per_channel=config.per_channel)
        model.set_submodule(n, w)
        layers[n] = w.spec()
    record_edit(model, "qat", layers=layers, target=target)
    if calibration is not None:
        batch = calibration_batches(calibration, 1)[0]
        model.eval()
        with torch.no_grad():
            run_batch(model, batch)
    model.train(was_training)
    return model


def _replay_qat(model: nn.Module, layers: dict[str, dict[str, Any]], target: str = "auto") -> None:
    for name, spec in layers.items():
        m = model.get_submodule(name)
        w = QATWrapper(m, spec["bits"], spec["act_bits"], learn_scales=spec["learn_scales"],
                       per_channel=spec["per_channel"])
        model.set_submodule(name, w.to(m.weight.device))
        for fq in (w.input_fq, w.weight_fq):
            if fq is not None:
                fq.initialized.fill_(True)  # the loaded state carries the trained steps


EDITS.register("qat", _replay_qat)
QUANTIZERS.register("qat", QuantMethod(QATConfig, prepare_qat, trains=True,  # train with fit(), then convert_qat
                                      edit_kinds=("qat", "qat_convert", "fold_bn")))


# --------------------------------------------------------------------------------------------
# schedule callbacks
# --------------------------------------------------------------------------------------------


def freeze_qat_scales(model: nn.Module, *, weights: bool = True, activations: bool = True,
                      frozen: bool = True) -> int:
    """Freeze (or unfreeze) the step sizes of every QAT quantizer; returns how many changed."""
    n = 0
    for w in qat_wrappers(model).values():
        if weights:
            w.weight_fq.freeze(frozen)
            n += 1
        if activations and w.input_fq is not None:
            w.input_fq.freeze(frozen)
            n += 1
    return n


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm in eval mode (running statistics fixed and used); returns the count."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            n += 1
    return n


def _check_schedule(name: str, at_epoch: int | None, at_step: int | None) -> None:
    if (at_epoch is None) == (at_step is None):
        raise ConfigError(f"{name}: give exactly one of at_epoch or at_step")
    for field, v in (("at_epoch", at_epoch), ("at_step", at_step)):
        if v is not None and v < 0:
            raise ConfigError(f"{name}: {field} must be >= 0, got {v}")


class FreezeObserversCallback(Callback):
    """From epoch `at_epoch` (0-based) or optimizer step `at_step` on, stop learning/tracking steps.

    `weights` / `activations` choose which quantizers freeze. Stateless: the condition is
    re-checked every epoch and step, so resuming from a checkpoint freezes again.
    """

    def __init__(self, at_epoch: int | None = None, at_step: int | None = None, *,
                 weights: bool = True, activations: bool = True) -> None:
        _check_schedule("FreezeObserversCallback", at_epoch, at_step)
        self.at_epoch, self.at_step = at_epoch, at_step
        self.weights, self.activations = weights, activations
        self.frozen = False

    def _due(self, state: FitState) -> bool:
        if self.at_epoch is not None:
            return state.epoch >= self.at_epoch
        return state.step >= int(self.at_step)  # type: ignore[arg-type]

    def _apply(self, state: FitState) -> None:
        if not self.frozen and self._due(state):
            freeze_qat_scales(state.task.eval_model(), weights=self.weights, activations=self.activations)
            self.frozen = True

    def on_epoch_begin(self, state: FitState) -> None:
        self._apply(state)

    def on_step_begin(self, state: FitState) -> None:
        self._apply(state)


class FreezeBatchNormCallback(Callback):
    """From epoch `at_epoch` (or step `at_step`) on, BatchNorm layers run in eval mode.

    Re-applied at every epoch and step start because the loop puts the model back in train mode
    at each epoch and after validation. Folding itself happens in `convert_qat`.
    """

    def __init__(self, at_epoch: int | None = None, at_step: int | None = None) -> None:
        _check_schedule("FreezeBatchNormCallback", at_epoch, at_step)
        self.at_epoch, self.at_step = at_epoch, at_step

    def _apply(self, state: FitState) -> None:
        due = state.epoch >= self.at_epoch if self.at_epoch is not None else state.step >= int(self.at_step)  # type: ignore[arg-type]
        if due:
            freeze_batchnorm(state.task.eval_model())

    def on_epoch_begin(self, state: FitState) -> None:
        self._apply(state)

    def on_step_begin(self, state: FitState) -> None:
        self._apply(state)

