"""FPGM: Filter Pruning via Geometric Median (He, Liu, Wang, Hu & Yang, CVPR 2019).

A filter close to the geometric median of its layer's filters is the one the others can best
stand in for, so it is the least important; one far from all the others is kept. FPGM scores a
unit by the sum of Euclidean distances from its filter to every other filter of the same layer
(the paper's approximation of distance to the geometric median), which needs no data and, unlike
the L1/L2 norm, does not assume that small filters are unimportant.

In condense the unit's filter is its rows in every layer that *produces* it (role "out": a conv's
output filters, a Linear's output rows, a fused qkv's slice), so a group coupled across layers
(a residual stage, a head) sums the per-layer scores after each is normalised by its mean.

This file is the whole scorer: registering a `Scorer` in `SCORERS` makes `importance="fpgm"`
work in the Python API, recipes (validated by name) and `condense prune --importance fpgm`.
"""
from __future__ import annotations

import torch
from torch import nn

from condense.prune.config import SCORERS, Scorer
from condense.prune.graph import Group
from condense.prune.importance import channel_view, normalised_sum


def fpgm_score(model: nn.Module, group: Group, _state: object = None) -> torch.Tensor | None:
    """Sum of distances from each unit's filter to the other units' filters, per producer layer."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    vecs = []
    for mem in group.members:
        t = tensors.get(mem.param)
        if mem.role != "out" or t is None or t.dim() < 2:
            continue
        rows = channel_view(t.detach().float(), mem, group.size)
        vecs.append(torch.cdist(rows[None], rows[None])[0].sum(1))
    return normalised_sum(vecs, group.size) if vecs else None


SCORERS.register("fpgm", Scorer(fpgm_score),
                 help="distance of each filter to the layer's other filters (He et al. 2019, geometric median)")
