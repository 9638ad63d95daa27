"""QUANTIZERS: quantization method name -> (config class, handler). Registration point for methods.

A method file registers itself at import time, and `condense/quantize/__init__.py` imports that
file explicitly (nothing walks packages):

    QUANTIZERS.register("dynamic", QuantMethod(DynamicConfig, dynamic_handler))

A handler is `handler(model, config, calibration) -> nn.Module` and must return a new model (never
mutate the caller's). `quantize()` has already applied its `targets` / `ignore` arguments to the
config's fields of the same names.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from condense.core.config import Config
from condense.core.registry import Registry

Handler = Callable[[nn.Module, Any, Any], nn.Module]


@dataclasses.dataclass(frozen=True)
class QuantMethod:
    """A registered quantization method, as every surface reads it: its config dataclass and
    handler; `trains`: the handler's result must be trained (`fit`) before it deploys (QAT), so a
    recipe stage takes `train:`; `deploys`: what ships ("int8": ONNX Runtime integer kernels from
    the static QDQ file, "int8_dynamic": weights int8 and activations quantized per batch,
    "packed": low-bit weights dequantized at run time); `edit_kinds`: the edit-log kinds its
    result carries (what `load()` replays, and what marks a stage as quantized in the report)."""

    config_cls: type[Config]
    handler: Handler
    trains: bool = False
    deploys: str = "int8"
    edit_kinds: tuple[str, ...] = ()


#: "static" (ptq.py); "dynamic", "weight_only", "qat" are registered by their own files.
QUANTIZERS: Registry[QuantMethod] = Registry("quantization method")
