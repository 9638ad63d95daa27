"""Low-rank factorization and depth reduction.

`factorize(model, FactorizeConfig(...), data=calibration)` replaces Linear / Conv2d layers by
products of thinner layers: truncated SVD (plain, or activation-aware: whitened by the input
covariance, SVD-LLM / ASVD) for Linear and 1x1 convs, Tucker-2 / channel / spatial SVD for k x k
convs, with ranks chosen by kept energy, a global parameter / MAC budget, explicit ranks, or
measured per-layer sensitivity (the pruning allocator). `reduce_depth(model, DepthConfig(...))`
removes whole residual blocks / transformer layers chosen by measured block-drop importance.
`factorize_and_recover` / `reduce_depth_and_recover` win the accuracy back through `fit()`
(fine-tune, or distill from the unedited model). Importing this package registers the edit-log
kinds `factorize` and `drop_blocks` used by `load()`.
"""
from __future__ import annotations

from condense.lowrank.config import DepthConfig, FactorizeConfig
from condense.lowrank.depth import droppable_blocks, reduce_depth
from condense.lowrank.factorize import factorize
from condense.lowrank.modules import LowRank
from condense.lowrank.recover import factorize_and_recover, reduce_depth_and_recover

__all__ = ["DepthConfig", "FactorizeConfig", "LowRank", "droppable_blocks", "factorize", "factorize_and_recover",
           "reduce_depth", "reduce_depth_and_recover"]
