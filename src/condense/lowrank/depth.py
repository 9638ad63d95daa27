"""Depth reduction: remove whole residual blocks or transformer layers, chosen by measurement.

A block can go when the network stays valid without it: a transformer layer (hidden size in =
out), or a residual block whose shortcut is the identity (the zoo's ResNet `BasicBlock` without a
projection, MobileNetV2's `InvertedResidual` with `use_residual`). Removing it leaves the
shortcut, i.e. the identity. Which blocks go is measured, one-shot: each candidate is removed on
its own and the metric re-measured; the ones whose removal costs least go (block-drop
sensitivity; Gromov et al. 2024 "The unreasonable ineffectiveness of the deeper layers", Men et
al. 2024 "ShortGPT"). A BERT-family encoder keeps its remaining layers in its config (its saved
folder opens in transformers); other models record a `drop_blocks` edit that `load()` replays.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError, did_you_mean
from condense.core.select import select_modules
from condense.lowrank.config import DepthConfig
from condense.models.edits import EDITS, record_edit


def _hf_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    hf = getattr(model, "hf", None)
    if hf is None:
        return None
    from condense.models.hf import encoder_layers

    blocks = encoder_layers(hf)
    name = next(n for n, m in model.named_modules() if m is blocks)
    return name, blocks


def _residual(m: nn.Module) -> bool:
    if getattr(m, "use_residual", False) is True:
        return True
    return isinstance(getattr(m, "shortcut", None), nn.Identity)


def droppable_blocks(model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None) -> list[str]:
    """Names of the blocks depth reduction may remove (module docstring), in model order.

    `targets` replaces the default candidates by the modules it selects (each must map its input
    to an output of the same shape, checked when removed); `ignore` takes some away."""
    hf = _hf_layers(model)
    if targets is not None:
        names = list(select_modules(model, targets, field="targets"))
    elif hf is not None:
        names = [f"{hf[0]}.{i}" for i in range(len(hf[1]))]
    else:
        names = [n for n, m in model.named_modules() if n and _residual(m)]
    if ignore:
        drop = set(select_modules(model, ignore, field="ignore"))
        names = [n for n in names if n not in drop]
    if not names:
        raise ConfigError(f"reduce_depth: {type(model).__name__} has no removable block (a transformer layer or a "
                          "residual block with an identity shortcut); name blocks with targets=")
    return names


def _drop(model: nn.Module, names: list[str]) -> None:
    """Remove `names` from `model` in place (no edit recorded)."""
    hf = _hf_layers(model)
    if hf is not None and all(n.startswith(hf[0] + ".") for n in names):
        from condense.models.hf import keep_layers

        gone = {int(n[len(hf[0]) + 1:].split(".")[0]) for n in names}
        keep_layers(model.hf, [i for i in range(len(hf[1])) if i not in gone])
        return
    for n in names:
        model.set_submodule(n, nn.Identity())


def _shape_preserving(model: nn.Module, names: list[str], example: Any) -> None:
    """Raise ConfigError for a named block whose output shape differs from its input's."""
    bad: list[str] = []
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: bad.append(n) if isinstance(o, torch.Tensor) and a and tuple(a[0].shape) != tuple(o.shape) else None)
        for n in names]
    try:
        with torch.no_grad():
            from condense.models.signature import call_model

            model.eval()
            model(*example) if isinstance(example, tuple) else call_model(model, example)
    finally:
        for h in hooks:
            h.remove()
    if bad:
        raise ConfigError(f"reduce_depth: block {bad[0]!r} changes the shape of its input; only blocks that map "
                          "their input to the same shape can be removed")


def reduce_depth(model: nn.Module, config: DepthConfig | dict[str, Any] | None = None, data: Any = None, *,
                 eval_fn: Callable[[nn.Module], float] | None = None, example_inputs: Any = None) -> nn.Module:
    """Remove `config.drop` blocks (the least important, measured on `data`) or `config.blocks`;
    in place. `eval_fn(model) -> float` (higher is better) replaces the default metric: accuracy
    on `data`, or for an encoder the mean cosine to the unreduced model. The report (candidates,
    metric with each removed, what went) is `model.condense_depth_report`."""
    cfg = DepthConfig.from_dict(config) if isinstance(config, dict) else (config or DepthConfig())
    candidates = droppable_blocks(model, cfg.targets, cfg.ignore)
    hf = _hf_layers(model)
    if hf is not None and getattr(model, "condense_edits", None):
        raise ConfigError("reduce_depth: this encoder already carries structural edits (pruned heads, factorized "
                          "layers) that name layers by index; remove layers first, then prune or factorize")
    report: dict[str, Any] = {"candidates": candidates}
    if cfg.blocks is not None:
        for b in cfg.blocks:
            if b not in candidates:
                raise ConfigError(f"reduce_depth: {b!r} is not a removable block{did_you_mean(b, candidates)}; "
                                  f"candidates: {', '.join(candidates)}")
        chosen = list(cfg.blocks)
    else:
        if cfg.drop >= len(candidates):
            raise ConfigError(f"reduce_depth: drop={cfg.drop} would remove all {len(candidates)} candidate blocks "
                              f"({', '.join(candidates)})")
        if eval_fn is None:
            if data is None:
                raise ConfigError("reduce_depth: choosing blocks by importance measures a metric; pass data= "
                                  "(held-out samples), eval_fn=, or name the blocks")
            from condense.data.loader import as_source, subset
            from condense.lowrank.sensitivity import default_metric

            n = min(len(as_source(data)), cfg.eval_batches * cfg.batch_size)
            eval_fn = default_metric(model, subset(data, list(range(n))))
        report["baseline"] = float(eval_fn(model))
        scores = {}
        for name in candidates:
            trial = copy.deepcopy(model)
            _drop(trial, [name])
            scores[name] = float(eval_fn(trial))
        report["metric_without"] = scores
        chosen = sorted(candidates, key=lambda n: (-scores[n], candidates.index(n)))[: cfg.drop]
    chosen = [n for n in candidates if n in chosen]  # model order
    if hf is None and cfg.targets is not None:
        from condense.prune.structured import example_tuple

        _shape_preserving(model, chosen, example_inputs if isinstance(example_inputs, dict) else example_tuple(model, example_inputs))
    _drop(model, chosen)
    if hf is None:
        record_edit(model, "drop_blocks", blocks=chosen)
    report["dropped"] = chosen
    model.condense_depth_report = report  # type: ignore[assignment]
    return model


def _replay_drop(model: nn.Module, blocks: list[str]) -> None:
    for name in blocks:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise InputFileError(f"edit log: 'drop_blocks' names {name!r}, which this architecture does not have") from None
        model.set_submodule(name, nn.Identity())


EDITS.register("drop_blocks", _replay_drop)
