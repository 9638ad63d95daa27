"""Structured pruning of attention heads and FFN neurons, physically removed.

BERT-family encoders take the path below (global head budget, per-layer head counts). Every other
transformers family (GPT-2, Llama / Qwen / Mistral with grouped-query attention, DistilBERT,
DeBERTa, ViT, ...) goes through the dependency engine (`heads_and_ffn_by_engine`): the groups with
attention heads and those as wide as the config's FFN lose the same share in every layer, scored
by the gate gradient ("gradient") or the weights' L2 norm ("weight").

    model = condense.build_model("hf:/models/all-MiniLM-L6-v2")
    condense.prune(model, {"method": "transformer", "heads": 0.3, "ffn": 0.25}, data=splits.train)

Scoring lives in `condense.prune.heads` (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really
Better than One?": the head-gate gradient; Taylor, activation and weight norms); choosing is
`choose_heads` / `choose_neurons`; surgery is `remove_heads` / `remove_neurons`:

- a head: its `attention_head_size` rows of query / key / value (weights and biases) and the
  same columns of `attention.output.dense` go; the self-attention's `num_attention_heads` and
  `all_head_size` follow (transformers 5 reshapes with `view(..., -1, attention_head_size)`, so
  a layer may keep any number of heads; eager and sdpa attention both run);
- a neuron: its row of `intermediate.dense` and column of `output.dense` go. Every layer keeps
  the same count, so `config.intermediate_size` describes the model.

What a saved folder can be opened by (transformers 5.25, checked): `config.pruned_heads` and
`prune_heads` are gone from transformers 5 (no code reads them), and BERT's head size is
`hidden_size / num_attention_heads`, so no transformers 5 config describes a layer with fewer
heads. Hence:

- FFN pruning: config.json (intermediate_size) describes the shape; `AutoModel.from_pretrained`
  opens the saved folder; `condense.load` rebuilds it from that config (the `prune_ffn` edit
  replays as a no-op check).
- head pruning: the edit log (`prune_heads`: per layer, the positions removed) is replayed by
  `condense.load`, which rebuilds the model strictly; condense.json says
  `transformers_loadable: false`. config.json also carries `pruned_heads` ({layer: original head
  ids}) in the transformers 4 format; transformers 4.x pruned those heads before reading the
  weights, so a 4.x install should open the folder (not tested: only 5.25 is installed here,
  which ignores the field). For stock transformers 5,
  `pad_pruned_heads(model)` gives a copy with the removed heads put back as zeros: identical
  outputs, loadable, but the attention weights are full size again.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from condense.core.errors import ConfigError, InputFileError
from condense.data.calibration import calibration_list, is_data
from condense.data.loader import as_source
from condense.models.edits import EDITS, edit_log, record_edit, set_edit_log
from condense.models.signature import batch_to, call_model, model_inputs
from condense.prune.config import PRUNERS, PruneContext, Pruner, TransformerConfig
from condense.prune.graph import dependency_groups
from condense.prune.heads import Block, blocks_of, importance_scores, masked
from condense.prune.hfconfig import ffn_width
from condense.prune.mha import split_attention
from condense.prune.structured import ChannelConfig, example_tuple, keep_count, prune_channels

# ----------------------------------------------------------------------------- surgery


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding the output rows (`dim=0`) or input columns (`dim=1`) `idx` of `lin`."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[idx] if dim == 0 else lin.bias.detach())
    new.weight.requires_grad_(lin.weight.requires_grad)
    if lin.bias is not None:
        new.bias.requires_grad_(lin.bias.requires_grad)
    new.train(lin.training)
    return new


def head_ids(block: Block, config: Any) -> list[int]:
    """The original (unpruned) ids of the block's current heads, in order."""
    ids = getattr(block.attention, "condense_head_ids", None)
    return list(ids) if ids is not None else list(range(int(config.num_attention_heads)))


def remove_heads(model: nn.Module, block: Block, positions: Iterable[int]) -> None:
    """Physically remove the heads at `positions` (current numbering) of `block`."""
    positions = sorted({int(p) for p in positions})
    if not positions:
        return
    n, d = block.heads, block.head_dim
    if positions[0] < 0 or positions[-1] >= n:
        raise ConfigError(f"{block.name} has {n} heads; cannot remove head positions {positions}")
    keep = [h for h in range(n) if h not in set(positions)]
    if not keep:
        raise ConfigError(f"removing heads {positions} would leave {block.name} with zero heads")
    cfg = model.hf.config
    ids = head_ids(block, cfg)
    idx = torch.tensor([h * d + j for h in keep for j in range(d)], dtype=torch.long)
    sa = block.self_attn
    for name in ("query", "key", "value"):
        setattr(sa, name, _slice_linear(getattr(sa, name), idx, 0))
    block.attention.output.dense = _slice_linear(block.attention.output.dense, idx, 1)
    sa.num_attention_heads = len(keep)
    sa.all_head_size = len(keep) * d
    block.attention.condense_head_ids = [ids[h] for h in keep]
    gone = {int(k): set(v) for k, v in (getattr(cfg, "pruned_heads", None) or {}).items()}
    gone[block.index] = gone.get(block.index, set()) | {ids[p] for p in positions}
    cfg.pruned_heads = {k: sorted(v) for k, v in sorted(gone.items())}


def remove_neurons(block: Block, keep: Sequence[int]) -> None:
    """Keep only the FFN neurons `keep` (current numbering) of `block`."""
    idx = torch.tensor(sorted(int(k) for k in keep), dtype=torch.long)
    block.intermediate.dense = _slice_linear(block.intermediate.dense, idx, 0)
    block.output.dense = _slice_linear(block.output.dense, idx, 1)


# ----------------------------------------------------------------------------- choosing


def _ranked(scores: torch.Tensor) -> list[int]:
    """Positions from least to most important (ties: lower position first)."""
    return torch.argsort(scores, stable=True).tolist()


def choose_heads(blocks: Sequence[Block], scores: Mapping[int, torch.Tensor], cfg: TransformerConfig) -> dict[int, list[int]]:
    """{layer: head positions to remove}: the lowest (per-layer normalised) scores; see TransformerConfig."""
    floor = cfg.min_heads_per_layer
    removed: dict[int, list[int]] = {b.index: [] for b in blocks}
    if cfg.heads == 0:
        return removed
    if cfg.head_scope == "layer":
        for b in blocks:
            r = math.floor(b.heads * cfg.heads + 0.5)
            if b.heads - r < floor:
                raise ConfigError(f"heads={cfg.heads} would leave {b.name} with {b.heads - r} of its {b.heads} heads "
                                  f"(min_heads_per_layer={floor}); lower heads")
            removed[b.index] = sorted(_ranked(scores[b.index])[:r])
        return removed
    total = sum(b.heads for b in blocks)
    budget = math.floor(total * cfg.heads + 0.5)
    pool = sorted((float(s), b.index, h) for b in blocks for h, s in enumerate(scores[b.index].tolist()))
    left = {b.index: b.heads for b in blocks}
    if budget > total - floor * len(blocks):  # infeasible: name the layer the ranking empties first
        for _, layer, _ in pool[:budget]:
            left[layer] -= 1
        short = next(i for i in sorted(left, key=lambda i: (left[i], i)))
        raise ConfigError(f"heads={cfg.heads} removes {budget} of {total} heads, which would leave layer {short} "
                          f"(encoder.layer.{short}) with {max(left[short], 0)} heads; keeping min_heads_per_layer="
                          f"{floor} in each of the {len(blocks)} layers allows at most {total - floor * len(blocks)}")
    for _, layer, h in pool:
        if budget == 0:
            break
        if left[layer] > floor:
            removed[layer].append(h)
            left[layer] -= 1
            budget -= 1
    return {k: sorted(v) for k, v in removed.items()}


def choose_neurons(blocks: Sequence[Block], scores: Mapping[int, torch.Tensor], cfg: TransformerConfig) -> tuple[int, dict[int, list[int]]]:
    """(kept width, {layer: kept neuron positions}): the same width everywhere, each layer's best."""
    sizes = {b.neurons for b in blocks}
    if len(sizes) != 1:
        raise ConfigError(f"FFN widths differ between layers ({sorted(sizes)}); transformers needs one intermediate_size")
    size = sizes.pop()
    k = keep_count(size, cfg.ffn, cfg.round_to, "the FFN")
    return k, {b.index: sorted(_ranked(-scores[b.index])[:k]) for b in blocks}


# ----------------------------------------------------------------------------- the method


def calibration_batches(data: Any, cfg: TransformerConfig) -> list[dict[str, Any]] | None:
    """Up to `cfg.calibration_batches` batches: a dataset is batched shuffled with `cfg.seed`;
    batches given as they are (a dict, a list / iterable of dicts) are read by quantization's one
    calibration reader (`quantize.calibration.calibration_list`; an empty set is a ConfigError)."""
    if data is None:
        return None
    if is_data(data) and not isinstance(data, torch.Tensor):
        data = islice(as_source(data).batches(cfg.batch_size, shuffle=True, seed=cfg.seed), cfg.calibration_batches)
    return calibration_list(data, max_batches=cfg.calibration_batches)


def transformer_importance(model: nn.Module, cfg: TransformerConfig | Mapping[str, Any],
                           data: Any = None) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """({layer: head scores}, {layer: neuron scores}) as `prune` would compute them; nothing changes."""
    if not isinstance(cfg, TransformerConfig):
        cfg = TransformerConfig.from_dict({"method": "transformer", **dict(cfg)})
    blocks = blocks_of(model)
    batches = None if cfg.importance == "weight" else calibration_batches(data, cfg)
    return importance_scores(model, blocks, cfg.importance, batches, heads=cfg.heads > 0, ffn=cfg.ffn > 0, seed=cfg.seed)


def heads_and_ffn_by_engine(model: nn.Module, cfg: TransformerConfig, ctx: PruneContext) -> nn.Module:
    """Heads and FFN neurons of any transformer family (GPT-2, Llama / Qwen with grouped-query
    attention, DistilBERT, DeBERTa, ViT, ...) through the dependency engine: the groups with
    attention heads, and those as wide as the config's FFN, are cut by `ChannelConfig` ratios
    in every layer (`head_scope="layer"`). Grouped-query attention loses whole key/value groups."""
    import warnings

    if cfg.importance not in ("gradient", "weight"):
        raise ConfigError(f"transformer pruning of {type(getattr(model, 'hf', model)).__name__}: importance "
                          f"{cfg.importance!r} needs BERT-style blocks; use 'gradient' or 'weight'")
    if cfg.head_scope == "global" and cfg.heads > 0:
        warnings.warn("transformer pruning outside the BERT layout removes the same share of heads in every layer "
                      "(head_scope='layer')", stacklevel=3)
    example = ctx.example_inputs
    if example is None:
        batches = calibration_batches(ctx.data, cfg)
        if not batches:
            raise ConfigError("transformer pruning of this model needs data= (or example_inputs=) to trace it")
        example = {k: v[:2] for k, v in model_inputs(model, batches[0]).items()}
    split_attention(model)
    example = example_tuple(model, example)
    groups = [g for g in dependency_groups(model, example) if g.prunable]
    hf = getattr(model, "hf", model)
    width = ffn_width(hf.config)[1] if getattr(hf, "config", None) is not None else None
    ratios: dict[str, float] = {}
    for g in groups:
        if g.heads and cfg.heads > 0:
            _check_kv_groups(g, cfg.heads, getattr(hf, "config", None))
            ratios.update({p: cfg.heads for p in g.producers})
        elif width is not None and g.size == width and cfg.ffn > 0 and not g.heads:
            ratios.update({p: cfg.ffn for p in g.producers})
    if not ratios:
        raise ConfigError(f"transformer pruning: the dependency engine found no prunable attention heads or FFN "
                          f"neurons in {type(hf).__name__} (frozen: "
                          f"{'; '.join(f'{g.root}: {g.reason}' for g in dependency_groups(model, example) if not g.prunable)})")
    ccfg = ChannelConfig(ratio=0.0, ratios=ratios, importance="gradient" if cfg.importance == "gradient" else "l2",
                         round_to=1, taylor_batches=cfg.calibration_batches, seed=cfg.seed)
    data = calibration_batches(ctx.data, cfg) if cfg.importance == "gradient" else None
    if cfg.importance == "gradient" and not data:
        raise ConfigError("importance 'gradient' needs calibration data: pass prune(..., data=...)")
    return prune_channels(model, ccfg, PruneContext(example, None, None, data))


def _check_kv_groups(g: Any, heads: float, config: Any) -> None:
    """Grouped-query attention loses whole key/value groups: a head ratio that is not a whole number
    of groups is refused, naming the layer and the group size (rounding would silently change it)."""
    n_heads = next((getattr(config, a) for a in ("num_attention_heads", "n_head", "n_heads")
                    if isinstance(getattr(config, a, None), int)), None)
    if not n_heads or g.size >= n_heads or n_heads % g.size:
        return
    per = n_heads // g.size
    removed = heads * g.size
    if abs(removed - round(removed)) > 1e-6:
        raise ConfigError(
            f"transformer pruning: {g.heads[0]!r} has {n_heads} query heads in {g.size} key/value groups of {per}; "
            f"heads={heads:g} would remove {heads * n_heads:g} query heads, which is not a whole number of groups. "
            f"Use a multiple of {1 / g.size:g} (whole key/value groups)")


def prune_transformer(model: nn.Module, cfg: TransformerConfig, ctx: PruneContext) -> nn.Module:
    """Score heads and FFN neurons, choose, remove them, and log the edits (module docstring)."""
    if ctx.targets or ctx.ignore:
        raise ConfigError("transformer pruning prunes every encoder layer; targets / ignore do not apply "
                          "(use head_scope / min_heads_per_layer to shape the head budget)")
    try:
        blocks = blocks_of(model)
    except ConfigError:
        if not _bert_free(model):
            raise
        return heads_and_ffn_by_engine(model, cfg, ctx)
    h_scores, n_scores = transformer_importance(model, cfg, ctx.data)
    removed = choose_heads(blocks, h_scores, cfg)
    width, kept = choose_neurons(blocks, n_scores, cfg) if cfg.ffn > 0 else (None, {})
    if any(removed.values()):
        before = {b.index: b.heads for b in blocks}
        for b in blocks:
            remove_heads(model, b, removed[b.index])
        record_edit(model, "prune_heads", layers={str(i): p for i, p in removed.items() if p},
                    remaining={str(b.index): b.heads for b in blocks if b.heads != before[b.index]})
    if width is not None and width != blocks[0].neurons:
        for b in blocks:
            remove_neurons(b, kept[b.index])
        model.hf.config.intermediate_size = width
        record_edit(model, "prune_ffn", intermediate_size=width)
    return model


def _replay_heads(model: nn.Module, layers: dict[str, list[int]], remaining: dict[str, int]) -> None:
    by_index = {b.index: b for b in blocks_of(model)}
    for key, positions in layers.items():
        b = by_index.get(int(key))
        if b is None:
            raise InputFileError(f"edit log: prune_heads names layer {key}, the model has {len(by_index)} layers")
        if b.heads == int(remaining[key]):  # already this shape (a transformers that honours pruned_heads)
            continue
        remove_heads(model, b, positions)


def _replay_ffn(model: nn.Module, intermediate_size: int) -> None:
    for b in blocks_of(model):
        if b.neurons != intermediate_size:  # config.json normally says it already; weights follow
            remove_neurons(b, range(intermediate_size))
    model.hf.config.intermediate_size = int(intermediate_size)


# ----------------------------------------------------------------------------- helpers


def _bert_free(model: nn.Module) -> bool:
    """A transformers model (wrapped as hf:) without BERT-style blocks: the engine path takes it."""
    hf = getattr(model, "hf", None)
    return hf is not None and hasattr(getattr(hf, "config", None), "model_type")


def pad_pruned_heads(model: nn.Module) -> nn.Module:
    """A copy of `model` whose removed heads are back as zeros: stock transformers 5 opens it.

    Zero query / key / value rows (and biases) give a removed head a uniform attention over a zero
    value, and its `attention.output.dense` columns are zero, so every output is unchanged (up to
    float summation order). The attention weights are full size again (FFN pruning stays);
    condense.json then says `transformers_loadable: true`.
    """
    out = copy.deepcopy(model)
    cfg = out.hf.config
    n = int(cfg.num_attention_heads)
    for b in blocks_of(out):
        ids, d = head_ids(b, cfg), b.head_dim
        if len(ids) == n:
            continue
        sa = b.self_attn
        rows = torch.tensor([h * d + j for h in ids for j in range(d)], dtype=torch.long)
        for name in ("query", "key", "value", "output"):
            lin = b.attention.output.dense if name == "output" else getattr(sa, name)
            dim = 1 if name == "output" else 0
            full = nn.Linear(lin.in_features if dim == 0 else n * d, n * d if dim == 0 else lin.out_features,
                             bias=lin.bias is not None, device=lin.weight.device, dtype=lin.weight.dtype)
            with torch.no_grad():
                full.weight.zero_()
                full.weight.index_copy_(dim, rows.to(lin.weight.device), lin.weight)
                if lin.bias is not None:
                    full.bias.zero_()
                    if dim == 0:
                        full.bias.index_copy_(0, rows.to(lin.weight.device), lin.bias)
                    else:
                        full.bias.copy_(lin.bias)
            if name == "output":
                b.attention.output.dense = full
            else:
                setattr(sa, name, full)
        sa.num_attention_heads, sa.all_head_size = n, n * d
        b.attention.condense_head_ids = list(range(n))
    if hasattr(cfg, "pruned_heads"):
        del cfg.pruned_heads
    set_edit_log(out, [e for e in edit_log(out) if e["kind"] != "prune_heads"])
    return out


def batch_macs(model: nn.Module, batch: Mapping[str, Any]) -> int:
    """Multiply-accumulates of one eval-mode forward on a dict batch (FlopCounterMode / 2)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, batch_to(model_inputs(model, batch), device))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(counter.get_total_flops()) // 2


def head_counts(model: nn.Module) -> list[int]:
    """Heads per layer, in order."""
    return [b.heads for b in blocks_of(model)]


PRUNERS.register("transformer", Pruner(TransformerConfig, prune_transformer, reads_data=True),
                 help="BERT-family heads + FFN neurons (physically removed)")
EDITS.register("prune_heads", _replay_heads)
EDITS.register("prune_ffn", _replay_ffn)

__all__ = ["batch_macs", "calibration_batches", "choose_heads", "choose_neurons", "head_counts", "masked",
           "pad_pruned_heads", "prune_transformer", "remove_heads", "remove_neurons", "transformer_importance"]
