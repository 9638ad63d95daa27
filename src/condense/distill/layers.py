"""Module names of a transformer's parts, found from the model, so losses can say "layer 2".

The transformer losses (`hidden_state`, `minilm`) take layer *indices*; this module turns them
into the qualified module names `FeatureTap` hooks (`hf.encoder.layer.2`,
`hf.encoder.layer.5.attention.self.query`, ...). It reads BERT-family encoders (bert, roberta,
xlm-roberta, electra, MiniLM, ...: `<base>.embeddings`, `<base>.encoder.layer[i]`,
`layer.attention.self.{query,key,value}`), wrapped by `condense.models.hf` (`model.hf`) or bare.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from condense.core.errors import ConfigError
from condense.models.hf import encoder_layers


def _hf(model: nn.Module) -> nn.Module:
    return getattr(model, "hf", model)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _describe(model: nn.Module) -> str:
    return type(model).__name__


def transformer_blocks(model: nn.Module, what: str = "model") -> list[str]:
    """Qualified names (in `model`) of its transformer blocks, first to last."""
    try:
        blocks = encoder_layers(_hf(model))
    except ConfigError:
        raise ConfigError(
            f"the {what} ({_describe(model)}) has no BERT-style `encoder.layer` list of transformer blocks; "
            "the transformer losses read BERT-family encoders (hf: models: bert, roberta, electra, MiniLM, ...)"
        ) from None
    base = _names(model).get(id(blocks))
    if base is None:  # pragma: no cover - encoder_layers returns a submodule of the model
        raise ConfigError(f"the {what}'s transformer blocks are not among its named modules")
    return [f"{base}.{i}" if base else str(i) for i in range(len(blocks))]


def embeddings_name(model: nn.Module, what: str = "model") -> str:
    """Qualified name of the embedding layer (token + position + type embeddings, LayerNorm)."""
    hf = _hf(model)
    emb = getattr(getattr(hf, "base_model", hf), "embeddings", None)
    name = _names(model).get(id(emb)) if isinstance(emb, nn.Module) else None
    if not name:
        raise ConfigError(f"the {what} ({_describe(model)}) has no `embeddings` module; use embeddings: false")
    return name


@dataclass(frozen=True)
class SelfAttention:
    """One block's self-attention: the names of its query / key / value Linears and its heads."""

    block: str
    query: str
    key: str
    value: str
    heads: int
    width: int  # all heads together: query.out_features

    def name(self, part: str) -> str:
        return {"query": self.query, "key": self.key, "value": self.value}[part]


def self_attention(model: nn.Module, index: int, what: str = "model") -> SelfAttention:
    """The self-attention of block `index` (negative counts from the end)."""
    blocks = transformer_blocks(model, what)
    n = len(blocks)
    if not -n <= index < n:
        raise ConfigError(f"layer {index} is out of range: the {what} has {n} transformer layers (0..{n - 1})")
    block = blocks[index]
    modules = dict(model.named_modules())
    attn = getattr(getattr(modules[block], "attention", None), "self", None)
    parts = {p: getattr(attn, p, None) for p in ("query", "key", "value")}
    if attn is None or not all(isinstance(m, nn.Linear) for m in parts.values()):
        raise ConfigError(f"the {what}'s block {block} has no BERT-style attention.self.query / key / value Linears")
    heads = getattr(attn, "num_attention_heads", None)
    if heads is None:
        heads = getattr(getattr(_hf(model), "config", None), "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise ConfigError(f"the {what}'s block {block}: cannot tell its number of attention heads")
    width = parts["query"].out_features
    names = _names(model)
    return SelfAttention(block, *(names[id(parts[p])] for p in ("query", "key", "value")), heads=heads, width=width)


__all__ = ["SelfAttention", "embeddings_name", "self_attention", "transformer_blocks"]
