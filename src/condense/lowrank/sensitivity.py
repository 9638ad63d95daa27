"""Rank selection from measured sensitivity, on the pruning machinery.

For each layer and each ratio of `sensitivity_ratios`, the layer alone is factorized at the
largest candidate that removes at least that fraction of its budget (parameters or MACs) and
the metric is measured. The table has the shape `condense.prune.sensitivity.layer_sensitivity`
produces, and `allocate_by_tolerance` (the pruning allocator) picks per-layer ratios at the
smallest common metric drop that meets the global budget: least sensitive layers lose most.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.lowrank.modules import build_lowrank
from condense.lowrank.rank import Candidate, LayerPlan
from condense.prune.sensitivity import allocate_by_tolerance
from condense.train.edit import validation_metric


def at_ratio(plan: LayerPlan, ratio: float, budget: str) -> Candidate | None:
    """The richest candidate removing at least `ratio` of the layer's budget (None: none does)."""
    limit = plan.cost(None, budget) * (1.0 - ratio)
    ok = [c for c in plan.candidates if plan.cost(c, budget) <= limit]
    return ok[-1] if ok else None


def default_metric(model: nn.Module, eval_data: Any) -> Callable[[nn.Module], float]:
    """Accuracy on `eval_data`; for an encoder, mean cosine to `model`'s outputs (computed once):
    `condense.train.edit.validation_metric`, the metric every structural edit reports."""
    metric = validation_metric(model, eval_data)
    if metric is None:
        raise ConfigError("low-rank sensitivity needs labelled evaluation data (or an encoder, scored by cosine "
                          "to its own outputs)")
    return metric


def rank_sensitivity(model: nn.Module, plans: list[LayerPlan], metric: Callable[[nn.Module], float],
                     ratios: Sequence[float], budget: str) -> dict[str, Any]:
    """Metric per layer and ratio (one layer factorized at a time; `model` is untouched)."""
    ratios = sorted(float(r) for r in ratios)
    table: dict[str, Any] = {"method": "lowrank", "ratios": ratios, "budget": budget,
                             "baseline": float(metric(model)), "entries": []}
    with torch.no_grad():
        for p in plans:
            entry: dict[str, Any] = {"name": p.name, "size": p.cost(None, budget), "metric": [], "rank": []}
            for r in ratios:
                cand = at_ratio(p, r, budget)
                entry["rank"].append(None if cand is None else cand.rank)
                entry["metric"].append(float("-inf") if cand is None else float(metric(copy_with(model, p, cand))))
            table["entries"].append(entry)
    return table


def allocate_ranks(plans: list[LayerPlan], table: dict[str, Any], ratio: float, budget: str) -> dict[str, Candidate | None]:
    """Per-layer candidates removing >= `ratio` of the layers' `budget` at the smallest metric drop."""
    by_name = {p.name: p for p in plans}

    def pick(ratios: dict[str, float]) -> dict[str, Candidate | None]:
        return {n: (at_ratio(by_name[n], r, budget) if r > 0 else None) for n, r in ratios.items()}

    def cost(ratios: dict[str, float]) -> float:
        return sum(by_name[n].cost(c, budget) for n, c in pick(ratios).items())

    total = sum(p.cost(None, budget) for p in plans)
    best = allocate_by_tolerance(table, cost, total * (1.0 - ratio))
    if best is None:
        floor = cost({p.name: max([r for r, c in zip(table["ratios"], e["rank"], strict=True) if c is not None], default=0.0)
                      for p, e in zip(plans, table["entries"], strict=True)})
        raise ConfigError(f"factorize: removing {ratio:.0%} of the selected layers' {budget} cannot be met from the "
                          f"tested ratios {table['ratios']}; the closest reachable removes {1 - floor / total:.1%}")
    return pick(_back_off(table, best, cost, total * (1.0 - ratio)))


def _back_off(table: dict[str, Any], ratios: dict[str, float], cost: Callable[[dict[str, float]], float],
              goal: float) -> dict[str, float]:
    """Give back compression the budget does not need: a metric that saturates (many layers at
    zero measured drop) lets the tolerance search overshoot the target. Layers are stepped down
    one tested ratio at a time, the most sensitive at their ratio first, while the goal holds."""
    grid = table["ratios"]
    metric = {e["name"]: dict(zip(grid, e["metric"], strict=True)) for e in table["entries"]}
    out = dict(ratios)
    changed = True
    while changed:
        changed = False
        for name in sorted(out, key=lambda n: metric[n].get(out[n], table["baseline"])):
            if out[name] <= 0:
                continue
            lower = [r for r in grid if r < out[name]]
            trial = {**out, name: lower[-1] if lower else 0.0}
            if cost(trial) <= goal:
                out, changed = trial, True
    return out


def copy_with(model: nn.Module, plan: LayerPlan, cand: Candidate) -> nn.Module:
    """A deep copy of `model` with only `plan`'s layer factorized at `cand` (for measuring)."""
    trial = copy.deepcopy(model)
    trial.set_submodule(plan.name, build_lowrank(plan.module, plan.form, cand.rank, plan.spec, plan.chol))
    return trial
