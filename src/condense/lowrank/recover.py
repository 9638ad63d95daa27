"""Factorize (or reduce depth) and win the accuracy back through the one `fit()` loop.

    model, info = factorize_and_recover(model, FactorizeConfig(rank_by="params", ratio=0.5),
                                        RecoverConfig(method="distill"), splits.train, splits.val)

Both run through the one `condense.train.edit.edit_and_recover` (shared with pruning): the same
steps and the same `info` keys (params / MACs and the validation metric before, after the edit
and after recovery, the BatchNorm recalibration, the fit) plus the edit's own report under
`info["edit"]`.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from condense.data.loader import as_source
from condense.data.views import subset
from condense.lowrank.config import DepthConfig, FactorizeConfig
from condense.lowrank.depth import reduce_depth
from condense.lowrank.factorize import as_factorize_config, factorize
from condense.models.edits import edit_report
from condense.train.edit import edit_and_recover
from condense.train.recover import RecoverConfig, recover_config


def factorize_and_recover(
    model: nn.Module,
    factorize_config: FactorizeConfig | dict[str, Any] | None,
    recover_config_: RecoverConfig | dict[str, Any] | None,
    train_data: Any,
    val_data: Any | None = None,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    val_samples: int = 2048,
    recover_data: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Factorize `model` (calibrated on `train_data`; sensitivity measured on `val_data`) and
    recover (on `recover_data`, default `train_data`); returns `(model, info)` (module docstring)."""
    fcfg = as_factorize_config(factorize_config)
    rcfg = recover_config(recover_config_)

    def edit(m: nn.Module) -> nn.Module:
        eval_data = None
        if fcfg.rank_by == "sensitivity" and val_data is not None:
            n = min(len(as_source(val_data)), val_samples)
            eval_data = subset(val_data, list(range(n))) if n < len(as_source(val_data)) else val_data
        return factorize(m, fcfg, data=train_data, eval_data=eval_data)

    return edit_and_recover(model, edit, rcfg, train_data, val_data, teacher=teacher, resume=resume,
                            recover_data=recover_data, val_samples=val_samples,
                            report=lambda m: edit_report(m, "lowrank"))


def reduce_depth_and_recover(
    model: nn.Module,
    depth_config: DepthConfig | dict[str, Any] | None,
    recover_config_: RecoverConfig | dict[str, Any] | None,
    train_data: Any,
    val_data: Any | None = None,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    val_samples: int = 2048,
    recover_data: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove blocks (importance measured on `val_data`) and recover (on `recover_data`, default
    `train_data`); returns `(model, info)`."""
    dcfg = DepthConfig.from_dict(depth_config) if isinstance(depth_config, dict) else (depth_config or DepthConfig())
    rcfg = recover_config(recover_config_)

    def edit(m: nn.Module) -> nn.Module:
        return reduce_depth(m, dcfg, val_data if val_data is not None else train_data)

    return edit_and_recover(model, edit, rcfg, train_data, val_data, teacher=teacher, resume=resume,
                            recover_data=recover_data, val_samples=val_samples,
                            report=lambda m: edit_report(m, "depth"))
