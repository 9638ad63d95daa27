"""Keep a Hugging Face config true after channel pruning, so the saved folder opens in transformers.

After `prune_channels` cuts a transformers model (bare, or wrapped as `model.hf`), the config
fields that describe the cut widths are set from the pruned tensors:

* `hidden_size` (and its aliases `n_embd`, `d_model`, `dim` through the config's attribute map)
  when the group holding the input embeddings' columns was cut;
* `num_attention_heads` / `num_key_value_heads` when every attention layer kept the same count
  (grouped-query attention keeps its query-per-key/value ratio);
* `intermediate_size` (or `n_inner`, `ffn_dim`, `hidden_dim`, `d_ff`, `encoder_ffn_dim`) when
  every feed-forward layer kept the same width.

The result is then checked the way transformers would build it: a model made from the patched
config on the meta device must have exactly the pruned tensors' shapes. When it does not (widths
differ between layers, e.g. `scope="global"`, or a width the config cannot express) the config is
left as it was and the pruned model stays loadable through `condense.load` (the edit log replays
the cut). `scope="layer"` (the default) gives every layer of one kind the same width.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from condense.models.hf import config_builds
from condense.prune.graph import Group

FFN_FIELDS = ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", "d_ff", "encoder_ffn_dim")
HIDDEN_FIELDS = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")


def _hf_of(model: nn.Module) -> tuple[nn.Module, str] | None:
    for prefix, m in (("hf.", getattr(model, "hf", None)), ("", model)):
        cfg = getattr(m, "config", None)
        if isinstance(m, nn.Module) and cfg is not None and hasattr(cfg, "to_dict") and hasattr(m, "get_input_embeddings"):
            return m, prefix
    return None


def _shapes_match(hf: nn.Module, config: Any) -> bool:
    return config_builds(type(hf), config, hf.state_dict())


def _field(cfg: Any, names: Sequence[str]) -> str | None:
    for n in names:
        if isinstance(getattr(cfg, n, None), int) and not isinstance(getattr(cfg, n), bool):
            return n
    return None


def ffn_width(cfg: Any) -> tuple[str | None, int | None]:
    """(config field, FFN width): `intermediate_size` and its aliases; GPT-2's `n_inner=None`
    means 4 x `n_embd`."""
    field = _field(cfg, FFN_FIELDS)
    if field:
        return field, int(getattr(cfg, field))
    if hasattr(cfg, "n_inner") and getattr(cfg, "n_inner", None) is None and isinstance(getattr(cfg, "n_embd", None), int):
        return "n_inner", 4 * int(cfg.n_embd)
    return None, None


def patch_hf_config(model: nn.Module, groups: Sequence[Group], keep: dict[str, Sequence[int]]) -> dict[str, int]:
    """Set the config fields the cut changed (module docstring); returns them ({} when left alone)."""
    found = _hf_of(model)
    if found is None or not keep:
        return {}
    hf, prefix = found
    cfg = hf.config
    try:
        emb_w = getattr(hf.get_input_embeddings(), "weight", None)
    except (NotImplementedError, AttributeError):
        emb_w = None
    emb_param = next((prefix + n for n, p in hf.named_parameters() if emb_w is not None and p is emb_w), None)
    heads_q = getattr(cfg, "num_attention_heads", None)
    heads_kv = getattr(cfg, "num_key_value_heads", None) or heads_q
    ffn_field, ffn_size = ffn_width(cfg)
    changes: dict[str, set[int]] = {}
    for g in groups:
        if g.root not in keep:
            continue
        new = len(set(keep[g.root]))
        if any(m.param == emb_param and m.dim == 1 for m in g.members):
            hidden = _field(cfg, HIDDEN_FIELDS)
            if hidden:
                changes.setdefault(hidden, set()).add(new)
        elif g.heads and heads_q:
            if heads_kv != heads_q and g.size == heads_kv:
                changes.setdefault("num_key_value_heads", set()).add(new)
                changes.setdefault("num_attention_heads", set()).add(new * (heads_q // heads_kv))
            elif g.size == heads_q:
                changes.setdefault("num_attention_heads", set()).add(new)
        elif ffn_field and g.size == ffn_size:
            changes.setdefault(ffn_field, set()).add(new)
    if not changes or any(len(v) != 1 for v in changes.values()):
        return {}
    patched = copy.deepcopy(cfg)
    head_dim = getattr(cfg, "head_dim", None)
    out = {k: next(iter(v)) for k, v in changes.items()}
    for k, v in out.items():
        setattr(patched, k, v)
    if head_dim is not None and "num_attention_heads" in out:
        patched.head_dim = head_dim  # heads go whole: their width stays
    if not _shapes_match(hf, patched):
        return {}
    for k, v in out.items():
        setattr(cfg, k, v)
    if head_dim is not None:
        cfg.head_dim = head_dim
    return out


def config_describes(model: nn.Module, fields: dict[str, int]) -> bool:
    """Whether the model's transformers config already holds these (patched) values."""
    found = _hf_of(model)
    return found is not None and all(getattr(found[0].config, k, None) == v for k, v in fields.items())
