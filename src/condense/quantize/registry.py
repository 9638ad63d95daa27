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
    """A registered quantization method: its config dataclass and its handler."""

    config_cls: type[Config]
    handler: Handler


#: "static" (ptq.py); "dynamic", "weight_only", "qat" are registered by their own files.
QUANTIZERS: Registry[QuantMethod] = Registry("quantization method")
