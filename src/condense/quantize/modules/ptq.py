"""Static post-training quantization (PTQ), simulated in PyTorch so its accuracy is known before export.

`quantize_static(model, config, calibration)` returns a quantized *copy*:

1. BatchNorm is folded into the preceding Conv / Linear (`fold.py`), as it will be at deployment.
2. Target layers (Conv1d / Conv2d / Linear by default; `targets` / `ignore` select) are wrapped in
   `QuantWrapper`s: per-channel symmetric weights, per-tensor activations, int32 bias, a directly
   following ReLU absorbed so the output grid starts at zero. The first and last layers stay at
   8 bits by default (they are the most sensitive; Nagel et al. 2021 sec. 4).
3. ONE calibration pass over at most `calibration_samples` samples feeds every observer; the
   observers' ranges are frozen into scale / zero-point buffers.
4. Optional bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
   Equalization and Bias Correction"; Banner et al. 2019): the expected output shift
   E[W x] - E[Q(W) x] = (W - Q(W)) E[x] per output channel, with E[x] measured during the same
   calibration pass, is added to the bias.

Layers selected but without a quantized form are skipped and listed in the model's report
(`QuantReport`, read with `quantize.attached.quant_report_of`) and warned about, never silently left wrong. The module swap is
recorded in the edit log ("fold_bn", "quantize_static") so `load()` rebuilds the wrappers on a
fresh model before loading weights; the qparams are buffers and load with them.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.config import Config
from condense.core.cpu import max_weight_bits, resolve_target
from condense.core.errors import CondenseError, ConfigError
from condense.core.linear import is_conv1d
from condense.core.select import select_modules
from condense.data.calibration import input_tensor, iter_calibration
from condense.models.edits import EDITS, edit_log, record_conv1d_swap, record_edit, set_edit_log
from condense.models.registry import model_spec
from condense.quantize.attached import attach_quant_report
from condense.quantize.modules.fake_quant import (
    FUSABLE_ACTS,
    SUPPORTED_TYPES,
    QuantWrapper,
    quant_wrappers,
    set_quant_mode,
)
from condense.quantize.modules.fold import call_counts, consumers, fold_batchnorm, trace_calls
from condense.quantize.modules.observers import OBSERVERS, make_observer
from condense.quantize.modules.primitives import MAX_BITS, MIN_BITS, QuantSpec
from condense.quantize.registry import QUANTIZERS, QuantMethod


@dataclasses.dataclass
class QuantizeConfig(Config):
    """Settings of `quantize(model, config)`; `method` picks the registered quantizer.

    static (this file): `weight_bits` / `activation_bits` (2..8); `observer` (+ `observer_options`,
    e.g. {"percentile": 99.99}) for activations and `weight_observer` for weights; `per_channel`
    weight scales; `symmetric_activations` (signed, zero point 0) instead of asymmetric unsigned;
    `keep_first_last_8bit`; `quantize_outputs` also quantizes each layer's output (after an
    absorbed ReLU) so an int8 runtime keeps data in int8 between layers, except the model's final
    output (float logits); `bias_correction`; `calibration_samples` (N, in one pass);
    `targets` / `ignore` in the layer-selection language; `layer_bits` `{layer name: bits}` sets the
    weight bits of single layers (mixed precision; wins over `weight_bits` and the 8-bit edges).
    `target`: the CPU the int8 file will run on (`condense.core.cpu`; "auto" = this
    one). Where ONNX Runtime sums u8 x s8 products in saturating int16 (x86 without VNNI), every
    8-bit weight grid becomes 7-bit so the deployed kernels compute exactly what was calibrated.
    """

    method: str = "static"
    weight_bits: int = 8
    activation_bits: int = 8
    observer: str = "minmax"
    observer_options: dict[str, float] = dataclasses.field(default_factory=dict)
    weight_observer: str = "minmax"
    per_channel: bool = True
    symmetric_activations: bool = False
    keep_first_last_8bit: bool = True
    quantize_outputs: bool = True
    bias_correction: bool = True
    calibration_samples: int = 512
    targets: list[str] | None = None
    ignore: list[str] = dataclasses.field(default_factory=list)
    layer_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    target: str = "auto"

    def validate(self) -> None:
        if self.target != "auto":
            resolve_target(self.target)
        QUANTIZERS.get(self.method)
        for field in ("weight_bits", "activation_bits"):
            bits = getattr(self, field)
            if not MIN_BITS <= bits <= MAX_BITS:
                raise ConfigError(f"QuantizeConfig.{field} must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
        for name, bits in self.layer_bits.items():
            if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
                raise ConfigError(f"QuantizeConfig.layer_bits[{name!r}] must be in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
        OBSERVERS.get(self.weight_observer)
        make_observer(self.observer, QuantSpec.activation(self.activation_bits), **self.observer_options)
        if self.calibration_samples < 1:
            raise ConfigError(f"QuantizeConfig.calibration_samples must be >= 1, got {self.calibration_samples}")


@dataclasses.dataclass
class QuantReport:
    """What `quantize_static` did: wrapped layers, skipped ones (and why), folded BatchNorms."""

    method: str
    layers: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    folded_bn: list[list[str]]
    calibration_samples: int
    calibration_batches: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        s = (f"{self.method}: {len(self.layers)} layers quantized, {len(self.folded_bn)} BatchNorms folded, "
             f"{self.calibration_samples} calibration samples")
        if self.skipped:
            s += "; skipped: " + ", ".join(f"{d['name']} ({d['reason']})" for d in self.skipped)
        return s


_FOLDED = "BatchNorm folded into the preceding layer"


# -- calibration data ----------------------------------------------------------------------------
def calibration_inputs(calibration: Any, limit: int, batch_size: int = 64) -> Iterator[Tensor]:
    """Input tensors of the calibration data (`quantize.calibration.iter_calibration`), stopping
    after `limit` samples (the last batch is cut). Static PTQ traces models called as model(x)."""
    for batch in iter_calibration(calibration, limit, batch_size):
        yield input_tensor(batch)


def expected_input(model: nn.Module) -> str:
    """A human description of the input shape the model expects (from its spec or first layer)."""
    spec = model_spec(model)
    kw = getattr(spec, "kwargs", {}) or {}
    if "in_channels" in kw and "image_size" in kw:
        size = kw["image_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return f"(batch, {kw['in_channels']}, {h}, {w})"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return f"(batch, {m.in_channels}, height, width)"
        if isinstance(m, nn.Conv1d):
            return f"(batch, {m.in_channels}, length)"
        if isinstance(m, nn.Linear):
            return f"(..., {m.in_features}) at its first Linear"
    return "(unknown)"


def _run(model: nn.Module, x: Tensor, i: int, fn: Any = None) -> Any:
    """Forward `x` (or `fn(model, x)`); a failure is reported as a calibration shape error."""
    try:
        return model(x) if fn is None else fn(model, x)
    except CondenseError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            f"calibration batch {i} of shape {tuple(x.shape)} does not fit the model "
            f"(expected input {expected_input(model)}): {first}"
        ) from None


# -- selection -----------------------------------------------------------------------------------
def _supported(m: nn.Module) -> bool:
    """A layer with a quantized form: Conv1d / Conv2d / Linear, or transformers' Conv1D (quantized
    as the bit-identical nn.Linear it is swapped for, `condense.core.linear`)."""
    return isinstance(m, SUPPORTED_TYPES) or is_conv1d(m)


def _select(model: nn.Module, targets: Any, ignore: Any) -> tuple[list[str], list[dict[str, str]]]:
    """(supported target names, skipped entries) after expanding selected containers."""
    if targets is None:
        targets = [t.__name__ for t in SUPPORTED_TYPES if any(isinstance(m, t) for m in model.modules())]
        if any(is_conv1d(m) for m in model.modules()):
            targets.append("Conv1D")  # transformers' Conv1D (GPT-2): swapped for an nn.Linear
        if not targets:
            raise ConfigError("static quantization: the model has no Conv1d / Conv2d / Linear layer")
    chosen = select_modules(model, targets, ignore)
    ignored = set(select_modules(model, ignore, None, field="ignore")) if ignore else set()
    names: list[str] = []
    skipped: list[dict[str, str]] = []
    for name, m in chosen.items():
        if _supported(m):
            names.append(name)
            continue
        kind = type(m).__name__
        has_children = any(True for _ in m.children())
        if has_children:  # a selected container: its supported layers
            names += [f"{name}.{n}" for n, c in m.named_modules() if n and _supported(c)
                      and f"{name}.{n}" not in ignored]
        if any(True for _ in m.parameters(recurse=False)):
            skipped.append({"name": name, "type": kind, "kind": "unsupported",
                            "reason": f"{kind} has no quantized form (static PTQ quantizes "
                                      "Conv1d, Conv2d and Linear); left in float"})
        elif not has_children:
            skipped.append({"name": name, "type": kind, "kind": "no_weights",
                            "reason": "no weights to quantize (activations are quantized at the "
                                      "inputs / outputs of quantized layers)"})
    return list(dict.fromkeys(names)), skipped


def _make_wrapper(module: nn.Module, cfg: QuantizeConfig, layer: dict[str, Any]) -> QuantWrapper:
    return QuantWrapper(
        module,
        QuantSpec.weight(layer["weight_bits"], per_channel=cfg.per_channel),
        QuantSpec.activation(layer["activation_bits"], symmetric=cfg.symmetric_activations),
        observer=cfg.observer,
        observer_options=cfg.observer_options,
        weight_observer=cfg.weight_observer,
        act=layer["act"],
        quantize_output=layer["quantize_output"],
    )


def _plan(model: nn.Module, names: list[str], calls: list[Any], output: Any, cfg: QuantizeConfig,
          skipped: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per-layer plan (bits, absorbed activation, output quantization) in execution order."""
    counts = call_counts(calls)
    first_call = {}
    for c in calls:
        first_call.setdefault(c.name, c)
    order = [n for n in first_call if n in set(names)]
    for n in names:
        if n not in first_call:
            skipped.append({"name": n, "type": type(model.get_submodule(n)).__name__, "kind": "not_run",
                            "reason": "not called as a module on the calibration input (unused, or its "
                                      "parent reads its weight directly); left in float"})
    if not order:
        raise ConfigError("static quantization: none of the selected layers runs on the calibration input")
    unknown = sorted(set(cfg.layer_bits) - set(order))
    if unknown:
        raise ConfigError(f"QuantizeConfig.layer_bits names layers that are not quantized: {', '.join(unknown)} "
                          f"(quantized layers: {', '.join(order)})")
    out_tensor = output if isinstance(output, Tensor) else None
    plan: dict[str, dict[str, Any]] = {}
    widest = max_weight_bits(cfg.target)
    for n in order:
        edge = cfg.keep_first_last_8bit and n in (order[0], order[-1])
        call = first_call[n]
        readers = consumers(calls, call)
        act, act_module, final = None, None, call.out is out_tensor
        if (cfg.quantize_outputs and counts[n] == 1 and len(readers) == 1
                and type(readers[0].module) in FUSABLE_ACTS and counts[readers[0].name] == 1):
            act, act_module = FUSABLE_ACTS[type(readers[0].module)], readers[0].name
            final = readers[0].out is out_tensor
        plan[n] = {
            "weight_bits": min(widest, cfg.layer_bits.get(n, 8 if edge else cfg.weight_bits)),
            "activation_bits": 8 if edge else cfg.activation_bits,
            "act": act,
            "act_module": act_module,
            "quantize_output": bool(cfg.quantize_outputs and not final),
            "add_bias": False,
        }
    return plan


# -- bias correction -----------------------------------------------------------------------------
@torch.no_grad()
def _bias_correction(w: QuantWrapper) -> bool:
    """Add (W - Q(W)) E[x] (averaged over output positions) to the bias. Returns whether a bias was added."""
    mean = w.input_mean()
    if mean is None:
        return False
    m = w.module
    dw = m.weight - w.quantized_weight()
    if isinstance(m, nn.Linear):
        corr = dw @ mean.to(dw.dtype)
    elif mean.dim() == 1:  # per-channel mean only (input size varied): a constant input map
        k = [d * (s - 1) + 1 for d, s in zip(m.dilation, m.kernel_size, strict=True)]
        x = mean.to(dw.dtype).reshape(1, -1, *([1] * len(k))).expand(1, -1, *k)
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        corr = conv(x, dw, None, 1, 0, m.dilation, m.groups).flatten(1).mean(1)
    else:
        y = m._conv_forward(mean.to(dw.dtype)[None], dw, None)
        corr = y[0].flatten(1).mean(1)
    added = m.bias is None
    if added:
        m.bias = nn.Parameter(torch.zeros_like(corr))
    m.bias.add_(corr)
    return added


# -- the verb ------------------------------------------------------------------------------------
def quantize_static(
    model: nn.Module,
    config: QuantizeConfig | None = None,
    calibration: Any = None,
    targets: list[str] | str | None = None,
    ignore: list[str] | str | None = None,
) -> nn.Module:
    """Static PTQ: a simulated-quantized copy of `model` calibrated in one pass (see module doc)."""
    cfg = config or QuantizeConfig()
    if cfg.method != "static":
        raise ConfigError(f"quantize_static got a config with method {cfg.method!r}")
    if quant_wrappers(model):
        raise ConfigError("the model is already quantized (it holds QuantWrapper layers)")
    targets = cfg.targets if targets is None else ([targets] if isinstance(targets, str) else list(targets))
    ignore = list(cfg.ignore) if ignore is None else ([ignore] if isinstance(ignore, str) else list(ignore))
    cfg = cfg.replace(targets=targets, ignore=ignore)

    qmodel = copy.deepcopy(model).eval()
    set_edit_log(qmodel, edit_log(model))
    names, skipped = _select(qmodel, targets, ignore)
    record_conv1d_swap(qmodel, [n for n in names if is_conv1d(qmodel.get_submodule(n))])
    device = next((t.device for t in [*qmodel.parameters(), *qmodel.buffers()]), torch.device("cpu"))

    batches = calibration_inputs(calibration, cfg.calibration_samples)
    first = next(batches, None)
    if first is None:
        raise ConfigError("empty calibration set: give at least one non-empty batch of inputs")
    first = first.to(device)
    pairs = _run(qmodel, first, 0, fold_batchnorm)  # its trace is also the input-shape check
    folded = {bn for _, bn in pairs}
    for d in skipped:
        if d["name"] in folded:
            d["kind"], d["reason"] = "folded", _FOLDED
    calls, output = trace_calls(qmodel, first)
    cfg = dataclasses.replace(cfg, target=resolve_target(cfg.target))  # the edit log records the real target
    plan = _plan(qmodel, names, calls, output, cfg, skipped)

    for name, layer in plan.items():
        if layer["act_module"] is not None:
            qmodel.set_submodule(layer["act_module"], nn.Identity())
        wrapper = _make_wrapper(qmodel.get_submodule(name), cfg, layer)
        wrapper.collect_input_mean = cfg.bias_correction
        qmodel.set_submodule(name, wrapper.to(device))

    set_quant_mode(qmodel, "observe")
    n_samples, n_batches = 0, 0
    with torch.no_grad():
        for i, x in enumerate(_chain(first, batches)):
            x = x.to(device)
            _run(qmodel, x, i)
            n_samples += len(x)
            n_batches += 1

    wrappers = quant_wrappers(qmodel)
    for name, w in wrappers.items():
        w.freeze()
        if cfg.bias_correction:
            plan[name]["add_bias"] = _bias_correction(w)
        w.clear_input_mean()
        w.collect_input_mean = False

    record_edit(qmodel, "quantize_static", config=cfg.to_dict(), modules=list(plan), layers=plan)
    report = QuantReport(
        method="static",
        layers=[{"name": n, "type": type(wrappers[n].module).__name__, **{k: v for k, v in p.items() if k != "add_bias"},
                 "bias_corrected": cfg.bias_correction} for n, p in plan.items()],
        skipped=skipped,
        folded_bn=[list(p) for p in pairs],
        calibration_samples=n_samples,
        calibration_batches=n_batches,
    )
    attach_quant_report(qmodel, report)
    real_skips = [d for d in skipped if d["kind"] in ("unsupported", "not_run")]
    if real_skips:
        warnings.warn("static quantization skipped: " + "; ".join(f"{d['name']}: {d['reason']}" for d in real_skips),
                      stacklevel=2)
    return qmodel


def _chain(first: Tensor, rest: Iterator[Tensor]) -> Iterator[Tensor]:
    yield first
    yield from rest


def _replay_quantize_static(model: nn.Module, config: dict[str, Any], modules: list[str],
                            layers: dict[str, dict[str, Any]]) -> None:
    """Rebuild the wrappers of a recorded static quantization on a freshly built (folded) model."""
    cfg = QuantizeConfig.from_dict(config, where="edit quantize_static")
    for name in modules:
        layer = layers[name]
        m = model.get_submodule(name)
        if layer.get("add_bias") and m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
        if layer.get("act_module"):
            model.set_submodule(layer["act_module"], nn.Identity())
        wrapper = _make_wrapper(m, cfg, layer)
        wrapper.set_mode("quantize")
        model.set_submodule(name, wrapper)


EDITS.register("quantize_static", _replay_quantize_static)
QUANTIZERS.register("static", QuantMethod(QuantizeConfig, quantize_static, edit_kinds=("fold_bn", "quantize_static")))
