"""Channel dependency groups for structured pruning, found on the `torch.export` graph.

The model is exported once (`torch.export.export(..., strict=False)`, the ATen graph with its
parameters as inputs), which works on Hugging Face, timm and torchvision models that `torch.fx`
cannot trace. Every *dimension* of every tensor carries a descriptor:

* `None`: untracked (comes from the data, e.g. batch, tokens, pixels): never pruned;
* `Segs`: a list of `(space, width)` segments: positions of this dim belong, in blocks, to the
  channels of a *space*. Every dim of every parameter and buffer starts as its own space, so
  `linear`, `conv`, `embedding`, norms, `cls_token` / `pos_embed` and LayerScale all work by the
  same rules: an op that lines two dims up ties their spaces (union-find);
* `Split`: a dim made by a reshape that split one tracked dim into several (`(..., H*d) ->
  (..., H, d)`). It stays lazy: tying the outer dim (attention heads meeting in
  `scaled_dot_product_attention` or a batched matmul) *coarsens* the space to whole heads; a
  `select` / `unbind` on it (fused qkv) *refines* the space into its parts; the inner dim is
  positions inside a unit, free to be sliced (rotary embeddings) or contracted (q . k).

A class of tied spaces is one dependency *group*: removing unit i removes its positions from every
member parameter dim. A group is prunable when a layer produces it (the output rows of a Linear /
Conv / Conv1D, an embedding's columns) and nothing froze it. What an op cannot map freezes the
groups it touches, with the op and module named in the group's `reason` (never pruned silently
wrong): grouped convolutions remove whole groups, `GroupNorm` whole norm groups, grouped-query
attention whole key/value groups, and `nn.MultiheadAttention` (its forward checks widths against
its own attributes) freezes its projections. Groups reaching the model output are never pruned.
Discovery only depends on the architecture and input shapes (edit-log replay relies on that).

The package: `groups` (what comes out), `spaces` (descriptors, union-find), `nodes` (reading
graph nodes, op tables), `tracer` (descriptor algebra), `layers` / `reshape` / `slicing` (op
rules), `builder` (the walk, `export_graph`, `dependency_groups`).
"""
from __future__ import annotations

from condense.prune.graph.builder import dependency_groups, export_graph
from condense.prune.graph.groups import CONVS, NORMS, Group, Member, PruneGraphError, layer_kinds
from condense.prune.graph.nodes import (
    ELEMENTWISE,
    EXACT_REDUCE,
    FACTORIES,
    NORM_STATS,
    POINTWISE,
    POOL,
    REDUCE,
)
from condense.prune.graph.spaces import Desc, Fold, Seg, Segs, Split

__all__ = [
    "CONVS", "ELEMENTWISE", "EXACT_REDUCE", "FACTORIES", "NORMS", "NORM_STATS", "POINTWISE", "POOL", "REDUCE",
    "Desc", "Fold", "Group", "Member", "PruneGraphError", "Seg", "Segs", "Split",
    "dependency_groups", "export_graph", "layer_kinds",
]
