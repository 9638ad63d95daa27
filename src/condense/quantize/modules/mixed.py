"""Mixed precision: per-layer weight bit widths chosen from measured sensitivity under a size budget.

1. Sensitivity: quantize ONE Linear layer at a time to each candidate bit width (weight-only
   round-to-nearest, `weight_only.py`), everything else in float, and record the drop of the
   user's metric `eval_fn(model)` (higher is better; pass `higher_is_better=False` for a loss).
2. Choice: pick one bit width per layer to minimise the summed drops (negative drops, i.e.
   noise, count as 0; ties go to more bits) subject to the total bytes
   (packed weights + scales + zero points + bias of the quantized layers, plus every other tensor
   of the model at its current size) staying within the budget -- a multiple-choice knapsack,
   solved exactly by dynamic programming over bytes rounded *up* to a grid of `resolution` units
   (so the plan never exceeds the budget), or greedily (lower the layer with the smallest drop
   per byte saved until the plan fits).

Summing per-layer drops assumes the effects add up (the usual first-order approximation of
HAWQ -- Dong et al. 2019, "HAWQ: Hessian AWare Quantization of Neural Networks with
Mixed-Precision" -- and of Cai & Vasconcelos 2020, "Rethinking Differentiable Search for
Mixed-Precision Neural Networks"); measure the final model with `apply_plan` + `eval_fn`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.quantize.modules.weight_only import (
    SCALE_DTYPES,
    QuantizedLinear,
    WeightOnlyConfig,
    quantize_weight_only,
    quantized_linear_nbytes,
    select_linears,
)

__all__ = ["MixedPrecisionConfig", "MixedPrecisionPlan", "apply_plan", "mixed_precision", "solve_bits"]


@dataclasses.dataclass
class MixedPrecisionConfig(Config):
    """Search settings. Give exactly one of `size_budget_bytes` (whole-model state bytes) or
    `size_ratio` (fraction of the model's current state bytes). group_size / symmetric /
    scale_dtype / clip_search: the weight-only format of every candidate."""

    candidate_bits: list[int] = dataclasses.field(default_factory=lambda: [8, 6, 4, 2])
    size_budget_bytes: int | None = None
    size_ratio: float | None = None
    group_size: int = 128
    symmetric: bool = True
    scale_dtype: Literal["float16", "float32"] = "float16"
    clip_search: bool = True
    solver: Literal["knapsack", "greedy"] = "knapsack"
    resolution: int = 4000
    higher_is_better: bool = True
    targets: list[str] | None = None
    ignore: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if not self.candidate_bits:
            raise ConfigError("MixedPrecisionConfig.candidate_bits must not be empty")
        for b in self.candidate_bits:
            if not 2 <= b <= 8:
                raise ConfigError(f"MixedPrecisionConfig.candidate_bits: {b} is outside 2..8")
        if (self.size_budget_bytes is None) == (self.size_ratio is None):
            raise ConfigError("MixedPrecisionConfig: give exactly one of size_budget_bytes or size_ratio")
        if self.size_budget_bytes is not None and self.size_budget_bytes <= 0:
            raise ConfigError("MixedPrecisionConfig.size_budget_bytes must be > 0")
        if self.size_ratio is not None and not 0 < self.size_ratio <= 1:
            raise ConfigError(f"MixedPrecisionConfig.size_ratio must be in (0, 1], got {self.size_ratio}")
        if self.resolution < 10:
            raise ConfigError("MixedPrecisionConfig.resolution must be >= 10")
        if self.group_size < 0:
            raise ConfigError("MixedPrecisionConfig.group_size must be >= 0")


@dataclasses.dataclass
class MixedPrecisionPlan:
    """The chosen `bits` per layer, the estimated bytes, and the measurements behind them."""

    bits: dict[str, int]
    estimated_bytes: int
    budget_bytes: int
    original_bytes: int
    baseline_metric: float
    sensitivity: dict[str, dict[int, float]]  # layer -> bits -> metric drop
    layer_bytes: dict[str, dict[int, int]]
    total_sensitivity: float
    weight_format: dict[str, Any] = dataclasses.field(default_factory=dict)  # WeightOnlyConfig fields

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sensitivity"] = {n: {str(b): v for b, v in s.items()} for n, s in self.sensitivity.items()}
        d["layer_bytes"] = {n: {str(b): v for b, v in s.items()} for n, s in self.layer_bytes.items()}
        return d

    def weight_only_config(self, algorithm: str = "rtn") -> WeightOnlyConfig:
        """The WeightOnlyConfig that applies this plan (same weight format as the search)."""
        return WeightOnlyConfig(
            bits=min(self.bits.values()), targets=list(self.bits), layer_bits=dict(self.bits),
            algorithm=algorithm, **self.weight_format,
        )


def _state_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        if t.data_ptr() in seen and t.numel():
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def solve_bits(
    sensitivity: dict[str, dict[int, float]],
    layer_bytes: dict[str, dict[int, int]],
    budget: int,
    *,
    solver: str = "knapsack",
    resolution: int = 4000,
) -> dict[str, int]:
    """Choose bits per layer minimising summed sensitivity with summed bytes <= `budget`."""
    names = list(sensitivity)
    smallest = sum(min(layer_bytes[n].values()) for n in names)
    if smallest > budget:
        raise ConfigError(
            f"size budget {budget} bytes is below the smallest plan ({smallest} bytes with every "
            "layer at its lowest candidate width); raise the budget or add lower bit widths"
        )
    if solver == "greedy":
        return _greedy(sensitivity, layer_bytes, budget)
    unit = max(1.0, budget / resolution)
    cap = int(budget // unit)
    inf = float("inf")
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    choice: list[np.ndarray] = []
    for n in names:
        opts = sorted(sensitivity[n])
        new = np.full(cap + 1, inf)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        for k, b in enumerate(opts):
            c = int(math.ceil(layer_bytes[n][b] / unit))
            if c > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[c:] = dp[: cap + 1 - c] + sensitivity[n][b]
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        dp = new
        choice.append(arg)
    if not np.isfinite(dp).any():
        # Rounding costs up to the grid made a barely feasible budget infeasible: fall back.
        return _greedy(sensitivity, layer_bytes, budget)
    j = int(np.nanargmin(np.where(np.isfinite(dp), dp, np.nan)))
    plan: dict[str, int] = {}
    for n, arg in zip(reversed(names), reversed(choice), strict=True):
        b = sorted(sensitivity[n])[int(arg[j])]
        plan[n] = b
        j -= int(math.ceil(layer_bytes[n][b] / unit))
    return {n: plan[n] for n in names}


def _greedy(sensitivity: dict[str, dict[int, float]], layer_bytes: dict[str, dict[int, int]],
            budget: int) -> dict[str, int]:
    plan = {n: max(s) for n, s in sensitivity.items()}
    total = sum(layer_bytes[n][b] for n, b in plan.items())
    while total > budget:
        best, best_rate = None, math.inf
        for n, b in plan.items():
            lower = [c for c in sensitivity[n] if c < b]
            if not lower:
                continue
            c = max(lower)
            saved = layer_bytes[n][b] - layer_bytes[n][c]
            if saved <= 0:
                continue
            rate = (sensitivity[n][c] - sensitivity[n][b]) / saved
            if rate < best_rate:
                best, best_rate = (n, c), rate
        if best is None:
            raise ConfigError(f"greedy mixed precision cannot reach the budget of {budget} bytes")
        n, c = best
        total -= layer_bytes[n][plan[n]] - layer_bytes[n][c]
        plan[n] = c
    return plan


@torch.no_grad()
def mixed_precision(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], float],
    config: MixedPrecisionConfig | None = None,
    **overrides: Any,
) -> MixedPrecisionPlan:
    """Measure per-layer sensitivity and choose per-layer weight bits under a size budget.

    `eval_fn(model) -> float` scores a model (accuracy, or a loss with higher_is_better=False);
    it is called 1 + layers x candidates times. `overrides` are config fields
    (`mixed_precision(model, fn, candidate_bits=[8, 4], size_ratio=0.2)`). The caller's model is
    never modified; apply the plan with `apply_plan(model, plan)`.
    """
    if config is None:
        config = MixedPrecisionConfig.from_dict(overrides)
    elif overrides:
        config = config.replace(**overrides)
    work = copy.deepcopy(model)
    sign = 1.0 if config.higher_is_better else -1.0
    base = float(eval_fn(work))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped-module warnings are repeated by apply_plan
        linears = select_linears(work, config.targets, list(config.ignore), what="mixed-precision")
    scale_dtype = SCALE_DTYPES[config.scale_dtype]
    scale_bytes = torch.empty(0, dtype=scale_dtype).element_size()
    sens: dict[str, dict[int, float]] = {}
    sizes: dict[str, dict[int, int]] = {}
    for name, lin in linears.items():
        sens[name], sizes[name] = {}, {}
        for b in sorted(set(config.candidate_bits), reverse=True):
            q = QuantizedLinear.from_linear(lin, b, config.group_size, config.symmetric,
                                            clip_search=config.clip_search, scale_dtype=scale_dtype)
            work.set_submodule(name, q)
            try:
                score = float(eval_fn(work))
            finally:
                work.set_submodule(name, lin)
            sens[name][b] = sign * (base - score)
            sizes[name][b] = quantized_linear_nbytes(
                lin.in_features, lin.out_features, b, config.group_size, config.symmetric,
                lin.bias is not None, scale_bytes, lin.bias.element_size() if lin.bias is not None else 4,
            )
    original = _state_bytes(work)
    fixed = original - sum(lin.weight.numel() * lin.weight.element_size()
                           + (lin.bias.numel() * lin.bias.element_size() if lin.bias is not None else 0)
                           for lin in linears.values())
    budget = config.size_budget_bytes if config.size_budget_bytes is not None else int(config.size_ratio * original)
    if fixed >= budget:
        raise ConfigError(
            f"size budget {budget} bytes is below the {fixed} bytes of the layers that are not quantized"
        )
    # A negative drop (quantized scored better) is measurement noise, not a reason to go lower;
    # a tiny penalty per missing bit makes spare budget go to higher precision.
    scale = max((abs(v) for s in sens.values() for v in s.values()), default=0.0)
    eps = 1e-6 * scale + 1e-12
    cost = {n: {b: max(v, 0.0) + eps * (8 - b) for b, v in s.items()} for n, s in sens.items()}
    bits = solve_bits(cost, sizes, budget - fixed, solver=config.solver, resolution=config.resolution)
    est = fixed + sum(sizes[n][b] for n, b in bits.items())
    return MixedPrecisionPlan(
        bits=bits,
        estimated_bytes=int(est),
        budget_bytes=int(budget),
        original_bytes=int(original),
        baseline_metric=base,
        sensitivity=sens,
        layer_bytes=sizes,
        total_sensitivity=float(sum(sens[n][b] for n, b in bits.items())),
        weight_format={"group_size": config.group_size, "symmetric": config.symmetric,
                       "scale_dtype": config.scale_dtype, "clip_search": config.clip_search},
    )


def apply_plan(model: nn.Module, plan: MixedPrecisionPlan, calibration: Any = None,
               algorithm: str = "rtn") -> nn.Module:
    """A copy of `model` quantized per `plan` (RTN by default; "gptq" needs `calibration`)."""
    return quantize_weight_only(model, plan.weight_only_config(algorithm), calibration)
