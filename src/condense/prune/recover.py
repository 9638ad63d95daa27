"""Recovery after pruning: fine-tune, or distill from the unpruned model; iterative cycles; MAC targets.

    model, info = prune_and_recover(model, ChannelConfig(round_to=8),
                                    RecoverConfig(method="distill", train=TrainConfig(epochs=5)),
                                    splits.train, splits.val, target_macs=0.25)

* `prune_and_recover` prunes once and recovers through the one `fit()` loop: plain fine-tuning
  (`train_model`) or distillation from a deep copy of the model as it was before pruning
  (`condense.distill.distill_fit`; Hinton KD, `alpha * soft_kd(T) + (1 - alpha) * ce`).
  Unstructured masks are parametrizations, so pruned weights stay exactly zero while training
  (their gradient is masked); this is checked after recovery, then `make_permanent` bakes them in.
* `iterative_prune` repeats prune -> recover along a list of steps (Han et al. 2015's iterative
  pruning), always distilling from the original dense model.
* `macs_ratio_to_channel_ratio` turns "keep 25 % of the MACs" into the uniform channel ratio that
  does it (bisection on the exact Conv/Linear cost model of `sensitivity.estimate_cost`, or on real
  pruned copies for global scope), so callers can ask for a MAC budget directly (`target_macs`).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from itertools import islice
from typing import Any, Literal

import torch
from torch import nn

from condense.core.errors import ConfigError, RunError
from condense.data.loader import as_source
from condense.data.loader import example_inputs as example_inputs_of
from condense.prune.api import prune
from condense.prune.config import (
    PRUNERS,
    ChannelConfig,
    MagnitudeConfig,
    NMConfig,
    PruneConfig,
    PruneContext,
    RandomConfig,
)
from condense.prune.graph import dependency_groups
from condense.prune.masks import get_mask, make_permanent, masked_layers, sparsity_report
from condense.prune.mha import split_attention
from condense.prune.report import count_macs, count_params
from condense.prune.sensitivity import estimate_cost, layer_costs
from condense.prune.structured import eligible_groups, example_tuple, group_ratios
from condense.prune.transformer import batch_macs
from condense.train.edit import edit_and_recover
from condense.train.recover import RecoverConfig, check_recovery_data, recalibrate_batchnorm
from condense.train.recover import recover_config as as_recover_config

__all__ = ["RecoverConfig", "iterative_prune", "macs_ratio_to_channel_ratio", "prune_and_recover",
           "recalibrate_batchnorm"]

Patterns = Sequence[str] | str | None


def _prune_config(config: PruneConfig | dict[str, Any]) -> PruneConfig:
    if isinstance(config, dict):
        return PruneConfig.from_dict(config)
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"prune config must be a PruneConfig or a mapping, got {type(config).__name__}")
    return PruneConfig.from_dict(config.to_dict()) if type(config) is PruneConfig else config


def _inputs(model: nn.Module, example_inputs: Any, data: Any | None, batches: bool = False) -> Any:
    """Batch-1 example inputs: given, else the first training sample, else from the model's spec.
    With `batches` (transformer pruning: models called with dict batches) a dict batch is kept."""
    if batches and isinstance(example_inputs, dict):
        return example_inputs
    if example_inputs is None and data is not None and len(as_source(data)):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = example_inputs_of(data, 1)
        if batches and isinstance(x, dict):
            return x
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"structured pruning traces models called as model(x); this data gives the inputs "
                              f"{sorted(x)} (transformer heads / FFN pruning is a separate method)")
        return (x.to(device),)
    return example_tuple(model, example_inputs)


# ----------------------------------------------------------------------------- MAC targets


def macs_ratio_to_channel_ratio(
    model: nn.Module,
    target_macs: float,
    config: ChannelConfig | dict[str, Any] | None = None,
    example_inputs: Any = None,
    targets: Patterns = None,
    ignore: Patterns = None,
    data: Any = None,
) -> float:
    """The smallest channel `ratio` for `config` whose pruned model keeps at most `target_macs`
    (a fraction, e.g. 0.25 = remove 75 %) of the model's MACs. `model` is not changed.

    Layer scope: bisection on the exact per-layer Conv/Linear cost model (no pruning needed;
    `ratios` overrides and `round_to` are honoured). Global scope: bisection on real pruned copies.
    Widths move in steps (integers, multiples of `round_to`), so the result lands on the nearest
    achievable MAC count at or below the target. Raises ConfigError when even the largest ratio
    that leaves a channel in every group keeps more than the target.
    """
    cfg = _prune_config(config or {"method": "channel"})
    if not isinstance(cfg, ChannelConfig):
        raise ConfigError(
            f"target_macs needs a structured method (channel / slimming), got {cfg.method!r}: "
            "unstructured masks do not reduce dense MACs"
        )
    if not 0.0 < float(target_macs) < 1.0:
        raise ConfigError(f"target_macs is the fraction of MACs kept, in (0, 1); got {target_macs!r}")
    split_attention(model)
    inputs = example_tuple(model, example_inputs)
    ctx = PruneContext(inputs, targets, ignore, data)
    groups = eligible_groups(model, dependency_groups(model, inputs), ctx)
    overrides = group_ratios(model, groups, cfg)
    dense = count_macs(model, inputs)
    goal = float(target_macs) * dense
    # every group keeps >= 1 channel while size * (1 - r) >= 0.5, and a ratio stays < 1
    hi = min([1.0 - 0.5 / g.size - 1e-6 for g in groups if overrides[g.root] is None]
             + [cfg.max_group_ratio if cfg.scope == "global" else 0.999])

    if cfg.scope == "layer":
        table = {
            "method": "channel", "macs": dense, "params": count_params(model), "round_to": cfg.round_to,
            "entries": [{"name": g.root, "size": g.size} for g in groups], "layers": layer_costs(model, inputs, groups),
        }

        def cost(r: float) -> float:
            return estimate_cost(table, {g.root: overrides[g.root] if overrides[g.root] is not None else r for g in groups}, "macs")
    else:
        def cost(r: float) -> float:
            trial = copy.deepcopy(model)
            prune(trial, cfg.replace(ratio=r), inputs, targets, ignore, data, recalibrate=False)
            return count_macs(trial, inputs)

    if cost(hi) > goal:
        raise ConfigError(
            f"target_macs {target_macs}: even channel ratio {hi:.3f} keeps {cost(hi) / dense:.1%} of the MACs "
            "(unprunable layers, overrides or round_to set a floor); ask for a larger fraction"
        )
    lo = 0.0
    if cost(lo) <= goal:
        return 0.0
    for _ in range(20 if cfg.scope == "global" else 40):
        mid = (lo + hi) / 2
        if cost(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return float(hi)


# ----------------------------------------------------------------------------- one cycle


def _numbers(model: nn.Module, inputs: Any) -> dict[str, Any]:
    macs = batch_macs(model, inputs) if isinstance(inputs, dict) else count_macs(model, inputs)
    return {"macs": macs, "params": count_params(model),
            "sparsity": sparsity_report(model)["global"]["sparsity"]}


def mask_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every layer's pruning mask, to check later that training kept them."""
    return {n: get_mask(m).mask.detach().clone() for n, m in masked_layers(model).items()}  # type: ignore[union-attr]


def check_masks_held(model: nn.Module, expected: dict[str, torch.Tensor]) -> int:
    """Raise RunError unless `model` still has exactly the masks of `expected` (same layers, same
    zeros) and computes with zero weights where they are 0. Returns the masked-out weights checked.
    """
    layers = masked_layers(model)
    if set(layers) != set(expected):
        lost, gained = sorted(set(expected) - set(layers)), sorted(set(layers) - set(expected))
        raise RunError(f"masks did not hold during recovery: masks lost on {lost[:5]}, new masks on {gained[:5]}")
    checked = 0
    with torch.no_grad():
        for name, m in layers.items():
            mask = get_mask(m).mask  # type: ignore[union-attr]
            if mask.shape != expected[name].shape or not torch.equal(mask.to(expected[name].device), expected[name]):
                raise RunError(f"masks did not hold during recovery: the mask of {name!r} changed")
            off = mask == 0
            leaked = int((m.weight[off] != 0).sum())
            if leaked:
                raise RunError(f"masks did not hold during recovery: {leaked} pruned weights of {name!r} became non-zero")
            checked += int(off.sum())
    return checked


def prune_and_recover(
    model: nn.Module,
    prune_config: PruneConfig | dict[str, Any],
    recover_config: RecoverConfig | dict[str, Any] | None,
    train_data: Any | None,
    val_data: Any | None = None,
    example_inputs: Any = None,
    targets: Patterns = None,
    ignore: Patterns = None,
    *,
    target_macs: float | None = None,
    teacher: nn.Module | None = None,
    resume: bool = False,
    recover_data: Any | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune `model` (in place) and recover its accuracy; return `(model, info)`.

    `target_macs` (structured methods only) replaces the config's `ratio` by the channel ratio
    that keeps that fraction of the MACs (`macs_ratio_to_channel_ratio`). For "distill" the
    teacher is `teacher`, by default a frozen deep copy of `model` taken before pruning.
    `resume=True` continues the recovery run from `recover_config.train.checkpoint_dir`: pruning
    is deterministic given the same dense model and config, so it is simply redone first.
    `recover_data` (default `train_data`) is what the recovery trains on, e.g. labelled plus
    unlabelled images for a label-free distillation recovery; importance and BatchNorm
    recalibration still read `train_data`.
    Runs through the one `condense.train.edit.edit_and_recover`: `info` has its keys (`before` /
    `edited` / `recovered` MACs, params and sparsity, `val` with the validation metric at each
    step, `fit`, ...) plus `prune` (the config as run), `target_macs` / `channel_ratio`, and
    `masked_weights_checked` (pruned weights verified still zero after recovery).
    """
    pcfg = _prune_config(prune_config)
    rcfg = as_recover_config(recover_config)
    check_recovery_data(rcfg, train_data)
    inputs = _inputs(model, example_inputs, train_data, batches=_reads_data(pcfg))
    extra: dict[str, Any] = {}
    if target_macs is not None:
        if not isinstance(pcfg, ChannelConfig):
            raise ConfigError(f"target_macs needs a structured method (channel / slimming), got {pcfg.method!r}")
        data = _taylor_batches(pcfg, train_data, rcfg)
        ratio = macs_ratio_to_channel_ratio(model, target_macs, pcfg, inputs, targets, ignore, data)
        pcfg = pcfg.replace(ratio=ratio)
        extra = {"target_macs": float(target_macs), "channel_ratio": ratio}
    masks_before: dict[str, torch.Tensor] = {}

    def edit(m: nn.Module) -> nn.Module:
        prune(m, pcfg, inputs, targets, ignore, _taylor_batches(pcfg, train_data, rcfg), recalibrate=False)  # BN: next step
        masks_before.update(mask_snapshot(m))  # the pruned weights recovery must leave at zero
        return m

    def after_recovery(m: nn.Module, info: dict[str, Any]) -> None:
        if masks_before or masked_layers(m):
            info["masked_weights_checked"] = check_masks_held(m, masks_before)
            if not rcfg.keep_masks:
                make_permanent(m)

    model, info = edit_and_recover(model, edit, rcfg, train_data, val_data, teacher=teacher, resume=resume,
                                   recover_data=recover_data, example=inputs, numbers=_numbers,
                                   after_recovery=after_recovery)
    info["prune"] = pcfg.to_dict()
    info.update(extra)
    return model, info


def _reads_data(cfg: PruneConfig) -> bool:
    return PRUNERS.get(cfg.method).reads_data


def _taylor_batches(cfg: PruneConfig, data: Any | None, rcfg: RecoverConfig) -> Any:
    """The first few training batches, for Taylor importance (which needs gradients); a method that
    reads the data itself (`Pruner.reads_data`: transformer, vocab) gets the training data."""
    if _reads_data(cfg):
        return data
    if not isinstance(cfg, ChannelConfig) or cfg.importance != "taylor" or data is None:
        return None
    return list(islice(as_source(data).batches(rcfg.train.batch_size), cfg.taylor_batches))


# ----------------------------------------------------------------------------- iterative


def iterative_prune(
    model: nn.Module,
    prune_config: PruneConfig | dict[str, Any],
    recover_config: RecoverConfig | dict[str, Any] | None,
    train_data: Any,
    val_data: Any | None = None,
    *,
    steps: Sequence[float],
    by: Literal["ratio", "macs"] = "ratio",
    example_inputs: Any = None,
    targets: Patterns = None,
    ignore: Patterns = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune -> recover cycles (Han et al. 2015): one `prune_and_recover` per step.

    `by="ratio"`: `steps` are increasing *cumulative* ratios of the original model (fraction of
    weights masked, or of each group's original channels removed), e.g. `[0.5, 0.75, 0.9]`.
    `by="macs"` (structured only): decreasing fractions of the original MACs kept, e.g.
    `[0.75, 0.5, 0.25]`. Distillation always learns from the original, unpruned model. Masks are
    kept between steps and made permanent at the end (unless `keep_masks`).
    """
    pcfg = _prune_config(prune_config)
    rcfg = as_recover_config(recover_config)
    steps = [float(s) for s in steps]
    if not steps:
        raise ConfigError("iterative_prune: steps is empty")
    if isinstance(pcfg, NMConfig):
        raise ConfigError("iterative_prune: N:M sparsity is fixed by n and m; there is nothing to iterate")
    if by not in ("ratio", "macs"):
        raise ConfigError(f"iterative_prune: by must be 'ratio' or 'macs', got {by!r}")
    if by == "macs":
        if not isinstance(pcfg, ChannelConfig):
            raise ConfigError("iterative_prune: by='macs' needs a structured method (channel / slimming)")
        if any(not 0 < s < 1 for s in steps) or any(b >= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ConfigError(f"iterative_prune: MAC steps must decrease within (0, 1), got {steps}")
    elif any(not 0 <= s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"iterative_prune: ratio steps must increase within [0, 1), got {steps}")
    inputs = _inputs(model, example_inputs, train_data)
    dense_macs = count_macs(model, inputs)
    teacher = copy.deepcopy(model) if rcfg.method == "distill" else None
    step_rcfg = rcfg.replace(keep_masks=True)
    history: list[dict[str, Any]] = []
    removed = 0.0
    for i, s in enumerate(steps):
        last = i == len(steps) - 1
        rc = rcfg if last else step_rcfg
        if by == "macs":
            model, info = prune_and_recover(
                model, pcfg, rc, train_data, val_data, inputs, targets, ignore,
                target_macs=min(s * dense_macs / count_macs(model, inputs), 0.999999), teacher=teacher,
            )
        else:
            if isinstance(pcfg, ChannelConfig):  # channel ratios apply to the current width
                step_cfg = pcfg.replace(ratio=1.0 - (1.0 - s) / (1.0 - removed))
            elif isinstance(pcfg, (MagnitudeConfig, RandomConfig)):  # masks count every weight
                step_cfg = pcfg.replace(ratio=s)
            else:  # pragma: no cover - a future method
                raise ConfigError(f"iterative_prune: method {pcfg.method!r} is not supported")
            model, info = prune_and_recover(model, step_cfg, rc, train_data, val_data, inputs, targets, ignore, teacher=teacher)
            removed = s
        info["step"] = s
        history.append(info)
    final = {"steps": history, "by": by, "dense_macs": dense_macs, "macs_fraction": count_macs(model, inputs) / max(dense_macs, 1),
             "val": history[-1]["val"].get("recovered"), "metric": history[-1]["metric"]}
    return model, final
