"""Which transformer blocks a Hugging Face model keeps: the shallow student of DistilBERT (Sanh et
al. 2019) and sentence-transformers' layer reduction, copied from a teacher's own blocks.

`build_model("hf:<folder>", layers=3)` applies `keep_layers` to a pretrained folder;
`student_from_teacher(teacher, 3)` does it to a model in memory, typically a teacher fine-tuned
on the task, so the student starts from the teacher's task-tuned embeddings, blocks and head.

Where the blocks are (`layer_layout`): a small table per `config.model_type`, checked against
transformers 5.x (`LAYER_PATHS`; BERT-family encoders `encoder.layer`, DistilBERT
`transformer.layer`, GPT-2 `h`, Llama / Qwen2 / Mistral `layers`, ViT `layers`), else the largest
`nn.ModuleList` of same-class, same-shape modules whose length is the config's layer count (the
stages of a hierarchical model such as ConvNeXt or Swin differ in width and are refused). ALBERT runs ONE
shared layer group `num_hidden_layers` times: keeping k layers there means running it k times.
The config's layer count (`num_hidden_layers`, or the field `attribute_map` names: GPT-2 `n_layer`,
DistilBERT `n_layers`) and per-layer config lists (`layer_types`) follow the kept blocks, and the
per-layer indices the blocks store (`layer_idx`, which KV caches are keyed by) are renumbered
0..n-1, so the saved folder opens with the matching Auto class and generation with a cache works.
(A GPT-2 config with `scale_attn_by_inverse_layer_idx` scales attention by the new index.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from condense.core.errors import ConfigError

#: where each family keeps its list of transformer blocks, relative to `base_model` (first found
#: wins); checked on tiny configs of transformers 5.25 by tests/test_hf_layers_families.py
LAYER_PATHS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("bert", "roberta", "electra", "xlm-roberta", "camembert", "mpnet", "deberta", "deberta-v2"),
                    ("encoder.layer",)),
    "distilbert": ("transformer.layer",),
    "gpt2": ("h",),
    **dict.fromkeys(("llama", "qwen2", "mistral"), ("layers", "model.layers")),
    "vit": ("layers", "encoder.layer"),  # transformers 5 names it `layers`; 4.x `encoder.layer`
}
#: models that run one shared layer group `num_hidden_layers` times (the groups' list)
SHARED_LAYERS: dict[str, str] = {"albert": "encoder.albert_layer_groups"}
#: config fields that hold one entry per layer (sliced to the kept layers)
PER_LAYER_CONFIG = ("layer_types", "no_rope_layers")
#: attributes a block's modules store their own position in (renumbered)
LAYER_INDEX_ATTRS = ("layer_idx",)
#: attributes the module holding the blocks may keep the count in (DistilBERT's `n_layers`)
_COUNT_ATTRS = ("n_layers", "num_layers", "num_hidden_layers", "n_layer")


def layer_count_field(config: Any) -> str | None:
    """The config field that counts the transformer layers (`num_hidden_layers`, or what
    `attribute_map` maps it to: GPT-2 `n_layer`, DistilBERT `n_layers`); None when there is none."""
    amap = getattr(type(config), "attribute_map", None) or getattr(config, "attribute_map", None) or {}
    field = amap.get("num_hidden_layers", "num_hidden_layers")
    if isinstance(getattr(config, field, None), int):
        return field
    for name in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if isinstance(getattr(config, name, None), int) and not isinstance(getattr(config, name), bool):
            return name
    return None


@dataclass(frozen=True)
class LayerLayout:
    """Where a Hugging Face model's transformer blocks are. `path`: the blocks' `nn.ModuleList`
    relative to the model given (for a shared model, its list of layer groups); `total`: how many
    layers run; `count_field`: the config field counting them; `shared`: one layer group run
    `total` times (ALBERT); `source`: "table" or "search"."""

    model_type: str
    path: str
    blocks: nn.ModuleList
    total: int
    count_field: str | None
    shared: bool = False
    source: str = "table"


def _get(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _prefix(hf: nn.Module, base: nn.Module) -> str:
    if base is hf:
        return ""
    name = next((n for n, m in hf.named_modules() if m is base), None)
    return f"{name}." if name else ""


def layer_layout(hf: nn.Module) -> LayerLayout:
    """The transformer blocks of Hugging Face model `hf` (module docstring): by `LAYER_PATHS`,
    else the largest list of same-class modules (as many as the config's layer count); a
    ConfigError naming the model type when neither finds them."""
    config = getattr(hf, "config", None)
    model_type = str(getattr(config, "model_type", "") or type(hf).__name__)
    field = layer_count_field(config) if config is not None else None
    count = getattr(config, field) if field else None
    base = getattr(hf, "base_model", hf)
    pre = _prefix(hf, base)
    if model_type in SHARED_LAYERS:
        groups = _get(base, SHARED_LAYERS[model_type])
        if isinstance(groups, nn.ModuleList) and isinstance(count, int):
            return LayerLayout(model_type, pre + SHARED_LAYERS[model_type], groups, count, field, shared=True)
    for path in LAYER_PATHS.get(model_type, ()):
        blocks = _get(base, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return LayerLayout(model_type, pre + path, blocks, len(blocks), field)
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in base.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 1 or len({type(c) for c in m}) != 1:
            continue
        if len({tuple((k, tuple(v.shape)) for k, v in c.state_dict().items()) for c in m}) != 1:
            continue  # stages of different widths (ConvNeXt, Swin): not interchangeable blocks
        if isinstance(count, int) and len(m) != count:
            continue
        if best is None or len(m) > len(best[1]):
            best = name, m
    if best is not None and model_type not in SHARED_LAYERS:
        return LayerLayout(model_type, pre + best[0], best[1], len(best[1]), field, source="search")
    raise ConfigError(f"hf: cannot find the transformer blocks of {type(hf).__name__} (model_type {model_type!r}): "
                      f"no known layout ({', '.join(sorted(LAYER_PATHS))}) and no list of "
                      f"{count if isinstance(count, int) else 'same-class'} same-class layers; name the blocks with "
                      "targets=")


def encoder_layers(hf: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a Hugging Face model (`layer_layout`); a ConfigError for
    a model whose layers share one set of weights (ALBERT), which has no per-layer blocks."""
    lay = layer_layout(hf)
    if lay.shared:
        raise ConfigError(f"hf: {type(hf).__name__} ({lay.model_type}) runs one shared layer group "
                          f"{lay.total} times, so it has no per-layer blocks; make it shallower with layers=k "
                          "(build_model / student_from_teacher: the shared layer runs k times)")
    return lay.blocks


def resolve_layers(layers: int | Sequence[int], total: int) -> list[int]:
    """`layers` as sorted indices into `total` blocks: a list as given (checked), or an int `k`
    meaning k blocks spread evenly from the first to the last (DistilBERT / sentence-transformers
    initialise a shallow student this way)."""
    if isinstance(layers, int) and not isinstance(layers, bool):
        if not 1 <= layers <= total:
            raise ConfigError(f"hf: layers={layers} must be between 1 and the model's {total} layers")
        if layers == 1:
            return [total - 1]
        return sorted({round(i * (total - 1) / (layers - 1)) for i in range(layers)})
    idx = list(layers) if isinstance(layers, Sequence) and not isinstance(layers, str) else None
    if not idx or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        raise ConfigError(f"hf: layers must be a count or a list of layer indices, got {layers!r}")
    if any(i < 0 or i >= total for i in idx):
        raise ConfigError(f"hf: layers {idx} out of range: the model has layers 0..{total - 1}")
    if any(b <= a for a, b in zip(idx, idx[1:], strict=False)):
        raise ConfigError(f"hf: layers {idx} must be strictly increasing")
    return idx


def _set_count(hf: nn.Module, lay: LayerLayout, n: int, idx: list[int]) -> None:
    """The config's layer count `n` and its per-layer lists sliced to `idx` (on every distinct
    config object of the model: the head's and the base model's are usually one)."""
    configs = {id(c): c for c in (getattr(m, "config", None) for m in hf.modules()) if c is not None}
    for config in configs.values():
        field = layer_count_field(config) or lay.count_field
        if field is None:
            continue
        total = getattr(config, field, None)
        if total != lay.total:
            continue
        for key in PER_LAYER_CONFIG:
            value = getattr(config, key, None)
            if isinstance(value, (list, tuple)) and len(value) == total:
                setattr(config, key, type(value)(value[i] for i in idx))
        setattr(config, field, n)


def keep_layers(hf: nn.Module, layers: int | Sequence[int]) -> list[int]:
    """Keep only the transformer blocks `layers` (their weights as they are) of Hugging Face model
    `hf`, in place, and say so in its config, so `from_pretrained` opens the saved folder; the
    blocks' own layer indices (`layer_idx`, KV caches) are renumbered. Returns the kept indices.
    A shared-layer model (ALBERT, one layer group) runs its layer group len(kept) times."""
    lay = layer_layout(hf)
    idx = resolve_layers(layers, lay.total)
    if lay.shared:
        groups = getattr(hf.config, "num_hidden_groups", 1)
        if groups != 1 or len(lay.blocks) != 1:
            raise ConfigError(f"hf: {type(hf).__name__} splits its {lay.total} layers over {groups} shared layer "
                              "groups; keeping a subset of layers needs one shared group (num_hidden_groups=1), "
                              "since the positions a group runs at follow from the layer count")
        _set_count(hf, lay, len(idx), idx)
        return idx
    if lay.count_field is None:
        raise ConfigError(f"hf: {type(hf).__name__} (model_type {lay.model_type!r}) has no layer count in its config "
                          "(num_hidden_layers); a shallower copy would not open from its saved folder")
    if getattr(hf.config, lay.count_field) != lay.total:
        raise ConfigError(f"hf: {type(hf).__name__} has {lay.total} blocks at {lay.path} but its config says "
                          f"{lay.count_field}={getattr(hf.config, lay.count_field)}; cannot keep a subset of them")
    parent_name, _, attr = lay.path.rpartition(".")
    parent = hf.get_submodule(parent_name)
    kept = nn.ModuleList([lay.blocks[i] for i in idx])
    setattr(parent, attr, kept)
    for new, block in enumerate(kept):  # the positions KV caches (and some scalings) are keyed by
        for m in block.modules():
            for name in LAYER_INDEX_ATTRS:
                value = getattr(m, name, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(m, name, new)
    for name in _COUNT_ATTRS:  # DistilBERT's Transformer keeps its own n_layers
        value = getattr(parent, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value == lay.total:
            setattr(parent, name, len(idx))
    _set_count(hf, lay, len(idx), idx)
    return idx


__all__ = ["LAYER_PATHS", "LayerLayout", "encoder_layers", "keep_layers", "layer_count_field", "layer_layout",
           "resolve_layers"]
