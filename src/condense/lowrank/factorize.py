"""`factorize(model, FactorizeConfig, data=...)`: rank selection -> decomposition -> module replacement.

Every selected Linear (transformers' Conv1D included) / Conv2d gets a plan (form, spectrum, candidate ranks with exact costs);
the ranks are chosen by energy, by a global budget, explicitly, or from measured sensitivity;
each chosen layer is replaced in place by a `LowRank` built from its (whitened) SVD, and the
replacements are recorded in the edit log (`load()` replays them). The layers left alone and
why, the ranks, and the parameter / MAC totals are in `model.condense_lowrank_report`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, did_you_mean
from condense.core.linear import is_linear, linear_kinds
from condense.evaluate.profile import measure_latency
from condense.lowrank.config import FactorizeConfig
from condense.lowrank.decompose import conv_geometry, energy, matrix_view, spectrum, whitener
from condense.lowrank.modules import build_lowrank
from condense.lowrank.rank import (
    Candidate,
    LayerPlan,
    by_budget,
    by_energy,
    candidates,
    check_rank,
    explicit_choice,
    layer_cost,
    summarize,
)
from condense.lowrank.sensitivity import allocate_ranks, default_metric, rank_sensitivity
from condense.lowrank.stats import LayerStats, collect_stats
from condense.models.edits import attach_edit_report, record_edit
from condense.prune.selection import select_layers
from condense.prune.structured import example_tuple


def as_factorize_config(config: FactorizeConfig | dict[str, Any] | None) -> FactorizeConfig:
    if config is None:
        return FactorizeConfig()
    if isinstance(config, dict):
        return FactorizeConfig.from_dict(config)
    if not isinstance(config, FactorizeConfig):
        raise ConfigError(f"factorize: config must be a FactorizeConfig or a mapping, got {type(config).__name__}")
    return config


def layer_form(module: nn.Module, cfg: FactorizeConfig) -> tuple[str | None, str | None]:
    """(form, None) for a layer this config factorizes, else (None, why not)."""
    if is_linear(module):  # nn.Linear or transformers' Conv1D (GPT-2)
        return "linear", None
    if conv_geometry(module) is None:  # type: ignore[arg-type]
        return None, "grouped / depthwise conv, string padding or a non-zero padding mode"
    if tuple(module.kernel_size) == (1, 1):
        return "channel", None
    if cfg.conv == "none":
        return None, "conv: none"
    if cfg.conv == "spatial" and 1 in tuple(module.kernel_size):
        return "channel", None
    return cfg.conv, None


def plan_layers(model: nn.Module, cfg: FactorizeConfig, data: Any, example_inputs: Any,
                skipped: dict[str, str]) -> tuple[list[LayerPlan], dict[str, LayerStats]]:
    """Select the layers, measure them, and build their plans (skipped ones go to `skipped`)."""
    selected = select_layers(model, cfg.targets, cfg.ignore, (*linear_kinds(), nn.Conv2d), "factorize")
    layers: dict[str, tuple[nn.Module, str]] = {}
    for name, m in selected.items():
        form, why = layer_form(m, cfg)
        if form is None:
            skipped[name] = f"left alone: {why}"
        else:
            layers[name] = (m, form)
    aware = cfg.method == "activation_svd"
    if aware and data is None:
        raise ConfigError("factorize: method 'activation_svd' measures each layer's inputs; pass calibration data "
                          "(data=...), or use method 'svd'")
    example = None
    if data is None:
        example = example_inputs if isinstance(example_inputs, dict) else example_tuple(model, example_inputs)
    stats = collect_stats(model, layers, data=data, example=example, covariance=aware, batches=cfg.calibration_batches,
                          batch_size=cfg.batch_size, max_vectors=cfg.max_vectors, seed=cfg.seed,
                          mask_padding=cfg.mask_padding)
    plans = []
    for name, (m, form) in layers.items():
        st = stats[name]
        if st.sample is None:
            skipped[name] = "left alone: the model never called it on the calibration data"
            continue
        chol = whitener(st.cov / max(st.count, 1)) if aware and st.cov is not None else None
        spec = spectrum(matrix_view(m, form), chol)
        out_energy = energy(spectrum(m.weight.reshape(m.weight.shape[0], -1))[1]) if form == "tucker2" else None
        cands, note = candidates(m, form, st, spec, out_energy, cfg.round_to)
        params, macs = layer_cost(m, form, None, st)
        plans.append(LayerPlan(name, m, form, params, macs, spec, chol, out_energy, cands, note))
    if not plans:
        raise ConfigError(f"factorize: none of the selected layers can be factorized ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return plans, stats


def choose(plans: list[LayerPlan], stats: dict[str, LayerStats], cfg: FactorizeConfig,
           sensitivity: Callable[[list[LayerPlan]], dict[str, Candidate | None]] | None) -> tuple[dict[str, Candidate | None], dict[str, str], dict[str, Any]]:
    """The candidate per layer (None: keep), reasons for kept layers, and how the choice was made."""
    reasons: dict[str, str] = {}
    info: dict[str, Any] = {"rank_by": cfg.rank_by}
    names = {p.name for p in plans}
    unknown = sorted(set(cfg.ranks) - names)
    if unknown:
        raise ConfigError(f"factorize: ranks names {unknown[0]!r}, not a selected layer{did_you_mean(unknown[0], sorted(names))}")
    fixed = {p.name: cfg.ranks.get(p.name, cfg.rank) for p in plans
             if p.name in cfg.ranks or cfg.rank is not None}
    free = [p for p in plans if p.name not in fixed]
    chosen: dict[str, Candidate | None] = {}
    for p in plans:
        if p.name in fixed:
            chosen[p.name], why = explicit_choice(p, check_rank(p, fixed[p.name]), stats[p.name])
            if why:
                reasons[p.name] = f"left alone: {why}"
    if free:
        if cfg.rank is not None:
            pass
        elif cfg.rank_by == "energy":
            for p in free:
                chosen[p.name] = by_energy(p, cfg.energy)
            info["energy"] = cfg.energy
        elif cfg.rank_by in ("params", "macs"):
            picked, level = by_budget(free, cfg.ratio, cfg.rank_by)
            chosen.update(picked)
            info.update(energy=level, ratio=cfg.ratio)
        else:
            if sensitivity is None:
                raise ConfigError("factorize: rank_by 'sensitivity' measures a metric per layer; pass eval_data "
                                  "(held-out data) or eval_fn")
            chosen.update(sensitivity(free))
            info.update(ratio=cfg.ratio, budget=cfg.budget)
    for p in plans:
        if chosen.get(p.name) is None and p.name not in reasons:
            if p.note:
                reasons[p.name] = f"left alone: {p.note}"
            elif cfg.rank_by == "energy" and p.name not in fixed:
                reasons[p.name] = (f"left alone: keeping {cfg.energy:.0%} of its energy needs a rank that would not be "
                                   "smaller than the layer")
            else:
                reasons[p.name] = "left alone: its rank selection kept it whole"
    return chosen, reasons, info


def _faster(original: nn.Module, new: nn.Module, x: torch.Tensor) -> tuple[bool, float, float]:
    with torch.no_grad():
        t_new = measure_latency(lambda: new(x), warmup=3, repeats=15)["p50_ms"]
        t_old = measure_latency(lambda: original(x), warmup=3, repeats=15)["p50_ms"]
    return t_new < t_old, t_old, t_new


def factorize(
    model: nn.Module,
    config: FactorizeConfig | dict[str, Any] | None = None,
    data: Any = None,
    example_inputs: Any = None,
    *,
    eval_fn: Callable[[nn.Module], float] | None = None,
    eval_data: Any = None,
) -> nn.Module:
    """Factorize `model`'s selected layers in place and return it (module docstring).

    `data`: calibration data (any dataset / loader condense takes), needed by "activation_svd"
    and used for the MAC counts; without it `example_inputs` (or the zoo model's spec) gives the
    shapes. `rank_by="sensitivity"` measures `eval_fn(model) -> float` (higher is better), by
    default accuracy on `eval_data`, or for an encoder the mean cosine to the unfactorized model.
    """
    cfg = as_factorize_config(config)
    skipped: dict[str, str] = {}
    plans, stats = plan_layers(model, cfg, data, example_inputs, skipped)
    sens = None
    sens_table: dict[str, Any] = {}
    if cfg.rank_by == "sensitivity" and (eval_fn is not None or eval_data is not None):
        metric = eval_fn or default_metric(model, eval_data)

        def sens(free: list[LayerPlan]) -> dict[str, Candidate | None]:
            sens_table.update(rank_sensitivity(model, free, metric, cfg.sensitivity_ratios, cfg.budget))
            return allocate_ranks(free, sens_table, cfg.ratio, cfg.budget)

    chosen, reasons, info = choose(plans, stats, cfg, sens)
    skipped.update(reasons)
    replaced: dict[str, dict[str, Any]] = {}
    rows = []
    for p in plans:
        cand = chosen.get(p.name)
        row: dict[str, Any] = {"name": p.name, "form": p.form, "params": p.params, "macs": p.macs}
        if cand is not None:
            new = build_lowrank(p.module, p.form, cand.rank, p.spec, p.chol)
            if cfg.check_latency:
                x = stats[p.name].sample
                faster, t_old, t_new = _faster(p.module, new, x)  # type: ignore[arg-type]
                row.update(latency_ms_before=t_old, latency_ms_after=t_new)
                if not faster:
                    skipped[p.name] = f"left alone: measured slower factorized ({t_new:.3f} ms vs {t_old:.3f} ms)"
                    chosen[p.name] = None
                    cand = None
            if cand is not None:
                model.set_submodule(p.name, new)
                replaced[p.name] = {"form": p.form, "rank": list(cand.rank)}
                row.update(rank=list(cand.rank), params_after=cand.params, macs_after=cand.macs, energy=cand.energy)
        if cand is None:
            row["status"] = skipped.get(p.name, "left alone")
        rows.append(row)
    if replaced:
        record_edit(model, "factorize", layers=replaced)
    report = {"config": cfg.to_dict(), **info, "layers": rows, "skipped": {k: v for k, v in skipped.items() if k not in replaced},
              "factorized": len(replaced), **summarize(plans, chosen)}
    if sens_table:
        report["sensitivity"] = sens_table
    attach_edit_report(model, "lowrank", report)
    return model
