"""What a quantized model carries besides its weights, read and written through one accessor pair each.

* The int8 plan: a method whose int8 file is written its own way, not from QuantWrappers (the
  transformer path: dynamic int8 in ONNX Runtime), returns a float copy carrying an `Int8Plan`.
  `export_int8_onnx` (quantize.graph.onnx_int8) dispatches on the plan's type, and
  `condense.export.deploy_precision` reads a model with a plan as int8.
* The quantization report: static PTQ's `QuantReport` (which layers were quantized how, which were
  skipped and why), read by `schemes`, the command line and the recipe stage.

Both live in a plain attribute of the model (named once, here), so they survive `copy.deepcopy`
and a whole-module pickle; the names are those used before they were written down here
(`model.condense_int8_plan`, `model.condense_quant_report`), so models made before still read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from condense.core.errors import ConfigError

if TYPE_CHECKING:
    from condense.quantize.modules.ptq import QuantReport

#: the model attribute holding its int8 plan
INT8_PLAN_ATTR = "condense_int8_plan"
#: the model attribute holding its quantization report
QUANT_REPORT_ATTR = "condense_quant_report"


class Int8Plan:
    """Base class of the int8 plans a quantization method attaches to the model it returns; each
    plan type registers the function that exports it (`quantize.graph.onnx_int8.PLAN_EXPORTERS`)."""


def attach_int8_plan(model: nn.Module, plan: Int8Plan) -> nn.Module:
    """Let `model` carry `plan` (replacing any plan it had); returns `model`."""
    if not isinstance(plan, Int8Plan):
        raise ConfigError(f"attach_int8_plan: expected an Int8Plan, got {type(plan).__name__}")
    setattr(model, INT8_PLAN_ATTR, plan)
    return model


def int8_plan_of(model: nn.Module) -> Int8Plan | None:
    """The int8 plan `model` carries, or None."""
    plan = getattr(model, INT8_PLAN_ATTR, None)
    if plan is not None and not isinstance(plan, Int8Plan):
        raise ConfigError(f"{type(model).__name__}.{INT8_PLAN_ATTR} is a {type(plan).__name__}, not an Int8Plan")
    return plan


def attach_quant_report(model: nn.Module, report: QuantReport) -> nn.Module:
    """Let `model` carry its quantization report; returns `model`."""
    setattr(model, QUANT_REPORT_ATTR, report)
    return model


def quant_report_of(model: nn.Module) -> QuantReport | None:
    """The quantization report `model` carries (static PTQ), or None."""
    return getattr(model, QUANT_REPORT_ATTR, None)
