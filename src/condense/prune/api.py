"""`prune(model, config)`: the pruning verb (re-exported by `condense.prune`). A module of its
own so that `recover` (prune, then win the accuracy back) can call it without importing the
package that re-exports `recover`."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from condense.core.errors import ConfigError
from condense.data.loader import as_source
from condense.prune.config import PRUNERS, PruneConfig, PruneContext
from condense.train.recover import RecoverConfig, recalibrate_batchnorm


def prune(
    model: nn.Module,
    config: PruneConfig | dict[str, Any],
    example_inputs: Any = None,
    targets: Sequence[str] | str | None = None,
    ignore: Sequence[str] | str | None = None,
    data: Any = None,
    *,
    recalibrate: bool = True,
) -> nn.Module:
    """Prune `model` in place with the method `config` names and return it.

    `targets` / `ignore` select layers (exact names, `re:<regex>`, type names). Structured
    methods need `example_inputs` (one batch-shaped tensor or tuple; derived from
    `model.condense_spec` for zoo models) and, for Taylor importance, `data` (training data, or
    batches of `{"input", "target"}`). Unstructured methods only mask (see `make_permanent`,
    `report`). `transformer` (heads / FFN neurons of an hf: encoder) reads calibration `data` (a
    dataset or a list of dict batches) unless its importance is "weight".

    BatchNorm: pruning changes what every later BatchNorm layer sees, so their running statistics
    go stale (a pruned CNN can fall to near chance accuracy). Given `data`, `prune` re-estimates
    them on a few shuffled batches (`recalibrate_batchnorm`, as `condense prune` does); without
    it, it warns. `recalibrate=False` skips both, for a caller that recalibrates or fine-tunes
    itself (`prune_and_recover`).
    """
    if isinstance(config, dict):
        config = PruneConfig.from_dict(config)
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"prune: config must be a PruneConfig or a mapping, got {type(config).__name__}")
    if type(config) is PruneConfig:  # the bare base: re-parse into the method's own config
        config = PruneConfig.from_dict(config.to_dict())
    pruner = PRUNERS.get(config.method)
    if not isinstance(config, pruner.config):
        raise ConfigError(f"prune: method {config.method!r} takes a {pruner.config.__name__}, got {type(config).__name__}")
    ctx = PruneContext(example_inputs=example_inputs, targets=targets, ignore=ignore, data=data)
    model = pruner.run(model, config, ctx)
    if recalibrate:
        _refresh_batchnorm(model, data, int(getattr(config, "seed", 0)))
    return model


def _batches_readable(data: Any) -> bool:
    """`recalibrate_batchnorm` can read `data` again: a list of batch dicts or a dataset / loader
    (not a one-shot iterator, which Taylor importance may already have used up)."""
    if isinstance(data, list | tuple):
        return bool(data) and all(isinstance(b, dict) for b in data)
    try:
        as_source(data)
    except ConfigError:
        return False
    return True


def _refresh_batchnorm(model: nn.Module, data: Any, seed: int) -> None:
    """Re-estimate the running statistics of the BatchNorm layers of a just-pruned `model` on
    `data` (RecoverConfig's default number of batches), or warn that they are stale."""
    if not any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules()):
        return
    if data is not None and _batches_readable(data):
        defaults = RecoverConfig()
        if recalibrate_batchnorm(model, data, defaults.bn_batches, defaults.train.batch_size, seed):
            return
    warnings.warn(
        "prune(): the pruned model's BatchNorm running statistics are stale (they describe the unpruned "
        "network, and can leave it near chance accuracy); pass training data as prune(..., data=splits.train) "
        "to re-estimate them, or fine-tune it (condense.prune.prune_and_recover); recalibrate=False silences this",
        stacklevel=3,
    )
