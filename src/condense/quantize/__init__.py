"""Quantization: primitives, observers, fake-quant, static PTQ and real int8 ONNX export.

One verb, `quantize(model, config, calibration=None, targets=None, ignore=None)`, dispatches on the
method through the `QUANTIZERS` registry. Methods register themselves when their file is imported
below (explicit imports, nothing walks the package).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError

# -- registered methods: each import registers its method in QUANTIZERS (and its edit replays) --
from condense.quantize import (
    aliases,  # first: answers the old flat paths (condense.quantize.ptq, ...) of quantize/modules, quantize/graph
    dynamic,  # noqa: F401  "dynamic"
    transformer_plan,  # noqa: F401  "transformer" (Hugging Face encoders -> dynamic int8 ONNX)
)
from condense.quantize.attached import (
    Int8Plan,
    attach_int8_plan,
    attach_quant_report,
    int8_plan_of,
    quant_report_of,
)
from condense.quantize.graph.onnx_int8 import (
    Int8ExportResult,
    export_int8_onnx,
    interleaved_latency,
    ort_latency_comparison,
)
from condense.quantize.modules import (
    gptq,  # noqa: F401  weight_only's "gptq" rounding
    ptq,  # noqa: F401  "static"
    qat,  # noqa: F401  "qat"
    qat_convert,  # noqa: F401  the "qat_convert" edit
    weight_only,  # noqa: F401  "weight_only"
)
from condense.quantize.modules.fake_quant import (
    FakeQuantize,
    QuantWrapper,
    quant_wrappers,
    set_quant_mode,
)
from condense.quantize.modules.fold import fold_batchnorm
from condense.quantize.modules.observers import OBSERVERS, Observer, make_observer
from condense.quantize.modules.primitives import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
)
from condense.quantize.modules.primitives import quantize as quantize_tensor
from condense.quantize.modules.ptq import QuantizeConfig, QuantReport, quantize_static
from condense.quantize.registry import QUANTIZERS, QuantMethod
from condense.quantize.transformer import (
    TransformerInt8Config,
    TransformerInt8Result,
    export_transformer_int8,
)
from condense.quantize.transformer_choice import TransformerInt8Choice, choose_transformer_int8

__getattr__ = aliases.module_getattr  # `condense.quantize.ptq` and the other old paths, as attributes

# A new method registers itself in its own file
# (`QUANTIZERS.register("name", QuantMethod(ItsConfig, its_handler))`) and is imported above.

__all__ = [
    "OBSERVERS",
    "QUANTIZERS",
    "FakeQuantize",
    "Int8ExportResult",
    "Int8Plan",
    "Observer",
    "QuantMethod",
    "QuantReport",
    "QuantSpec",
    "QuantWrapper",
    "QuantizeConfig",
    "attach_int8_plan",
    "attach_quant_report",
    "TransformerInt8Choice",
    "TransformerInt8Config",
    "TransformerInt8Result",
    "choose_transformer_int8",
    "compute_qparams",
    "dequantize",
    "export_int8_onnx",
    "export_transformer_int8",
    "fake_quantize",
    "fold_batchnorm",
    "int8_plan_of",
    "make_observer",
    "interleaved_latency",
    "ort_latency_comparison",
    "quant_report_of",
    "quant_wrappers",
    "quantize",
    "quantize_static",
    "quantize_tensor",
    "resolve_config",
    "set_quant_mode",
]


def resolve_config(config: Config | dict[str, Any] | None) -> tuple[str, Config]:
    """(method name, parsed config) for `quantize`.

    None -> static PTQ defaults. A mapping names its method under "method" (default "static") and
    is parsed by that method's config class ("method" is passed on only to QuantizeConfig
    subclasses). A config object selects the method registered for its class (by its `method`
    field when several methods share the class).
    """
    if config is None:
        return "static", QuantizeConfig()
    if isinstance(config, dict):
        data = dict(config)
        method = str(data.get("method", "static"))
        cls = QUANTIZERS.get(method).config_cls
        if not issubclass(cls, QuantizeConfig):
            data.pop("method", None)
        return method, cls.from_dict(data, where=f"quantize ({method})")
    if not isinstance(config, Config):
        raise ConfigError(f"quantize: config must be a Config, a mapping or None, got {type(config).__name__}")
    matches = [n for n in QUANTIZERS.names() if isinstance(config, QUANTIZERS.get(n).config_cls)]
    method = getattr(config, "method", None)
    if method in matches:
        return str(method), config
    if isinstance(config, QuantizeConfig):
        entry = QUANTIZERS.get(config.method)
        raise ConfigError(f"quantize: method {config.method!r} takes a {entry.config_cls.__name__}, not a QuantizeConfig")
    if len(matches) == 1:
        return matches[0], config
    if not matches:
        raise ConfigError(f"quantize: no registered quantization method takes a {type(config).__name__}")
    raise ConfigError(f"quantize: {type(config).__name__} fits several methods ({', '.join(matches)}); set its method")


def quantize(
    model: nn.Module,
    config: Config | dict[str, Any] | None = None,
    calibration: Any = None,
    targets: list[str] | str | None = None,
    ignore: list[str] | str | None = None,
) -> nn.Module:
    """Quantize a copy of `model` with the method the config names (the caller's model is untouched).

    `calibration`: any data the verbs take (an ArrayDataset, a torch Dataset or DataLoader, a
    tensor of inputs) or an iterable of batches (tensors, (x, y) tuples or dicts); required by
    static PTQ and GPTQ (`condense.quantize.calibration`). `targets` / `ignore` (module names,
    `re:<regex>` or type names like "Conv2d") override the config's own fields.
    """
    method, cfg = resolve_config(config)
    overrides = {k: [v] if isinstance(v, str) else list(v) for k, v in (("targets", targets), ("ignore", ignore))
                 if v is not None}
    if overrides:  # every method's config has `targets` / `ignore`
        cfg = cfg.replace(**overrides)
    return QUANTIZERS.get(method).handler(model, cfg, calibration)

