"""Factorize (or reduce depth) and win the accuracy back through the one `fit()` loop.

    model, info = factorize_and_recover(model, FactorizeConfig(rank_by="params", ratio=0.5),
                                        RecoverConfig(method="distill"), splits.train, splits.val)

The teacher of a "distill" recovery is a frozen copy of the model taken before the edit. The
edit is deterministic given the same model, data and config, so `resume=True` redoes it and
continues the recovery run from its checkpoint. `info` carries params / MACs and the validation
metric (accuracy, or mean cosine to the unedited model for an encoder) before, after the edit
and after recovery, plus the edit's own report.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from condense.data.loader import as_source, example_inputs
from condense.data.views import subset
from condense.lowrank.config import DepthConfig, FactorizeConfig
from condense.prune.report import count_macs, count_params
from condense.train.recover import (
    RecoverConfig,
    check_recovery_data,
    recalibrate_batchnorm,
    recover,
    recover_config,
    recovery_teacher,
)


def _numbers(model: nn.Module, example: Any) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model, example)}


def _edit_and_recover(model: nn.Module, edit: Callable[[nn.Module], nn.Module], report_attr: str,
                      rcfg: RecoverConfig, train_data: Any, val_data: Any, teacher: nn.Module | None,
                      resume: bool, val_samples: int, recover_data: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    from condense.lowrank.sensitivity import default_metric

    check_recovery_data(rcfg, train_data)
    source = train_data if train_data is not None else val_data
    example = example_inputs(source, 1)
    teacher = recovery_teacher(model, rcfg, teacher)
    metric = None
    if val_data is not None and len(as_source(val_data)):
        n = min(len(as_source(val_data)), val_samples)
        metric = default_metric(model, subset(val_data, list(range(n))) if n < len(as_source(val_data)) else val_data)
    info: dict[str, Any] = {"recover": rcfg.to_dict(), "before": _numbers(model, example), "val": {}}
    if metric:
        info["val"]["before"] = metric(model)
    model = edit(model)
    info["edit"] = getattr(model, report_attr, None)
    info["edited"] = _numbers(model, example)
    if metric:
        info["val"]["edited"] = metric(model)
    recalibrated = bool(rcfg.bn_batches) and train_data is not None and bool(
        recalibrate_batchnorm(model, train_data, rcfg.bn_batches, rcfg.train.batch_size, rcfg.train.seed))
    if recalibrated and metric:
        info["val"]["edited_bn_recalibrated"] = metric(model)
    model, fit_info = recover(model, rcfg, train_data if recover_data is None else recover_data, val_data,
                              teacher=teacher, resume=resume)
    if fit_info is not None:
        info["fit"] = fit_info
    info["recovered"] = _numbers(model, example)
    if metric:
        info["val"]["recovered"] = metric(model)
    info["params_fraction"] = info["recovered"]["params"] / max(info["before"]["params"], 1)
    info["macs_fraction"] = info["recovered"]["macs"] / max(info["before"]["macs"], 1)
    info["metric"] = "mean cosine to the unedited model" if _is_encoder(model) else "accuracy"
    return model, info


def _is_encoder(model: nn.Module) -> bool:
    from condense.models.hf import is_encoder

    return is_encoder(model)


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
    from condense.lowrank.factorize import as_factorize_config, factorize

    fcfg = as_factorize_config(factorize_config)
    rcfg = recover_config(recover_config_)

    def edit(m: nn.Module) -> nn.Module:
        eval_data = None
        if fcfg.rank_by == "sensitivity" and val_data is not None:
            n = min(len(as_source(val_data)), val_samples)
            eval_data = subset(val_data, list(range(n))) if n < len(as_source(val_data)) else val_data
        return factorize(m, fcfg, data=train_data, eval_data=eval_data)

    return _edit_and_recover(model, edit, "condense_lowrank_report", rcfg,
                             train_data, val_data, teacher, resume, val_samples, recover_data)


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
    from condense.lowrank.depth import reduce_depth

    dcfg = DepthConfig.from_dict(depth_config) if isinstance(depth_config, dict) else (depth_config or DepthConfig())
    rcfg = recover_config(recover_config_)

    def edit(m: nn.Module) -> nn.Module:
        return reduce_depth(m, dcfg, val_data if val_data is not None else train_data)

    return _edit_and_recover(model, edit, "condense_depth_report", rcfg, train_data, val_data, teacher, resume,
                             val_samples, recover_data)
