"""`nn.MultiheadAttention` as four Linear layers, so heads and widths can be cut.

torch's `nn.MultiheadAttention` cannot hold a pruned shape: its forward asserts that the query's
width equals `embed_dim`, unflattens the fused `in_proj` output by the *input* width, and
`nn.TransformerEncoderLayer`'s fast path hands `in_proj_weight` to a fused kernel that assumes
`embed_dim` x `num_heads` heads of `embed_dim / num_heads`. So the dependency engine freezes it.

`SplitAttention` computes the same function (Vaswani et al. 2017, as `F.multi_head_attention_forward`
does: same masks, dropout on the attention weights, averaged weights when asked) with separate
`q_proj` / `k_proj` / `v_proj` / `out_proj` Linears and an inner width of its own. Its call
signature and `(output, weights)` return are `nn.MultiheadAttention`'s, and it carries the
attributes torch's Transformer layers read (`batch_first`, `num_heads`, `_qkv_same_embed_dim`,
`in_proj_weight`, `in_proj_bias`), set so that their fused fast path is declined and the layer
calls this module. Heads are then ordinary `view(B, T, H, d)` heads to the engine, and the model
width is an ordinary channel space.

`split_attention(model)` swaps every plain `nn.MultiheadAttention` it can (not those with
`add_bias_kv` or `add_zero_attn`, which stay as they are and frozen), and records the edit
("mha_as_linears") so `condense.load` rebuilds the same modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.models.edits import EDITS, check_replay_targets, record_edit


class SplitAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out Linears; a drop-in for `nn.MultiheadAttention`."""

    _qkv_same_embed_dim = False  # torch's Transformer layers then take the module path, not the fused kernel
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, *, inner_dim: int | None = None, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        inner = inner_dim or embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @property
    def embed_dim(self) -> int:
        return self.out_proj.out_features

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """The same function as `mha` (weights copied, not shared)."""
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=bias, dropout=mha.dropout,
                  batch_first=mha.batch_first)
        new.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                ws = mha.in_proj_weight.split(e, 0)
            else:
                ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for proj, w, j in zip((new.q_proj, new.k_proj, new.v_proj), ws, range(3), strict=True):
                proj.weight.copy_(w)
                if bias:
                    proj.bias.copy_(mha.in_proj_bias[j * e:(j + 1) * e])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # unbatched (T, E): a batch of one
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, t, s = query.shape[0], query.shape[1], key.shape[1]
        h = self.num_heads
        q = self.q_proj(query).view(b, t, h, -1).transpose(1, 2)
        k = self.k_proj(key).view(b, s, h, -1).transpose(1, 2)
        v = self.v_proj(value).view(b, s, h, -1).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, b, t, s, q.dtype, causal=is_causal)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            weights = attn.mean(1) if average_attn_weights else attn
            out = F.dropout(attn, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, -1))
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, b: int, t: int, s: int,
              dtype: torch.dtype, *, causal: bool) -> Tensor | None:
        """One additive float mask (B, H or 1, T, S): `nn.MultiheadAttention`'s boolean masks are True
        where attention is NOT allowed; float masks are added to the scores."""
        if attn_mask is None and causal:
            attn_mask = torch.ones(t, s, dtype=torch.bool, device=self.q_proj.weight.device).triu(1)
        mask = None
        if attn_mask is not None:
            m = _additive(attn_mask, dtype)
            mask = m.view(b, self.num_heads, t, s) if m.dim() == 3 else m.view(1, 1, t, s)
        if key_padding_mask is not None:
            kp = _additive(key_padding_mask, dtype).view(b, 1, 1, s)
            mask = kp if mask is None else mask + kp
        return mask


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def convertible(module: nn.Module) -> bool:
    """A plain `nn.MultiheadAttention` without the extra key/value bias or zero-attention rows."""
    return (type(module) is nn.MultiheadAttention and module.bias_k is None and module.bias_v is None
            and not module.add_zero_attn)


def _swap(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, SplitAttention.from_mha(getattr(owner, attr)))


def split_attention(model: nn.Module) -> list[str]:
    """Replace every convertible `nn.MultiheadAttention` in `model` by an equivalent `SplitAttention`
    and record the edit; returns the names swapped (none: nothing recorded)."""
    names = [n for n, m in model.named_modules() if n and convertible(m)]
    if names:
        _swap(model, names)
        record_edit(model, "mha_as_linears", modules=names)
    return names


def _replay(model: nn.Module, modules: list[str]) -> None:
    check_replay_targets(model, "mha_as_linears", modules, convertible, "an nn.MultiheadAttention")
    _swap(model, modules)


EDITS.register("mha_as_linears", _replay)
