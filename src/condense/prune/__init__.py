"""Pruning: unstructured masks, N:M, gradual schedules, structured channel removal, slimming.

`prune(model, config)` is the one verb; a method is a config dataclass plus a handler in
`PRUNERS`. Scoring, surgery and schedules are separate modules (`importance`, `graph` +
`surgery`, `schedule`); `sensitivity` allocates per-layer ratios and `report` says honestly what
a pruned model saves; `recover` prunes and wins the accuracy back (fine-tune or distill from
the unpruned model, iterative cycles, MAC targets). `transformer` removes attention heads and FFN
neurons of BERT-family `hf:` encoders (`heads` scores them). Importing this package registers the
edit-log kinds `prune_channels`, `prune_masks`, `prune_unmask`, `prune_heads` and `prune_ffn`
used by `load()`.
"""
from __future__ import annotations

from condense.prune import fpgm, mha, structured, transformer, unstructured, vocab  # noqa: F401  (registers the methods)
from condense.prune.api import prune
from condense.prune.config import (
    PRUNERS,
    ChannelConfig,
    MagnitudeConfig,
    NMConfig,
    PruneConfig,
    PruneContext,
    RandomConfig,
    SlimmingConfig,
    TransformerConfig,
    VocabConfig,
)
from condense.prune.graph import Group, PruneGraphError, dependency_groups
from condense.prune.masks import make_permanent, sparsity_report
from condense.prune.recover import (
    RecoverConfig,
    iterative_prune,
    macs_ratio_to_channel_ratio,
    prune_and_recover,
    recalibrate_batchnorm,
)
from condense.prune.report import count_macs, pruning_report
from condense.prune.schedule import (
    GradualPruningCallback,
    SlimmingCallback,
    cubic_sparsity,
    linear_sparsity,
)
from condense.prune.sensitivity import allocate_ratios, estimate_cost, layer_sensitivity
from condense.prune.transformer import pad_pruned_heads, transformer_importance

__all__ = [
    "PRUNERS",
    "ChannelConfig",
    "GradualPruningCallback",
    "Group",
    "MagnitudeConfig",
    "NMConfig",
    "PruneConfig",
    "PruneContext",
    "PruneGraphError",
    "RandomConfig",
    "RecoverConfig",
    "SlimmingCallback",
    "SlimmingConfig",
    "TransformerConfig",
    "VocabConfig",
    "allocate_ratios",
    "count_macs",
    "cubic_sparsity",
    "dependency_groups",
    "estimate_cost",
    "iterative_prune",
    "layer_sensitivity",
    "linear_sparsity",
    "macs_ratio_to_channel_ratio",
    "make_permanent",
    "pad_pruned_heads",
    "prune",
    "prune_and_recover",
    "pruning_report",
    "recalibrate_batchnorm",
    "sparsity_report",
    "transformer_importance",
]
