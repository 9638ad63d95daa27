"""Channel surgery: slice every member parameter / buffer dim of the pruned groups, in place.

Each tensor is sliced once, against the original numbering (groups sharing a tensor, e.g. a `cat`
consumer, cannot shift each other's offsets); tied tensors stay tied. The layers then get their
face back (`in_features`, `out_channels`, `groups`, `num_features`, `normalized_shape`,
`embedding_dim`, Conv1D's `nf`, and attention modules' head counts and widths), so parameters,
MACs, bytes on disk and latency really drop and third-party forward code keeps working.

The edit is recorded as `prune_channels` with plain data only:
`{"input_shapes": [[1, 3, 32, 32]], "groups": [{"root": "features.0.conv", "size": 32,
"keep": [0, 3, 4, ...]}, ...]}`. Replay re-discovers the groups on the freshly built model
(deterministic: architecture only, never weights or scores) and cuts the recorded indices.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.models.edits import EDITS, record_edit
from condense.prune.graph import Group, dependency_groups
from condense.prune.hfconfig import config_describes, patch_hf_config

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads")
WIDTH_ATTRS = ("all_head_size", "split_size", "inner_dim", "attention_dim")


def _holders(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Every (module, attribute) that holds each parameter / buffer (tied weights have several)."""
    by_id: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in model.modules():
        for k, p in list(m._parameters.items()) + list(m._buffers.items()):
            if p is not None:
                by_id.setdefault(id(p), []).append((m, k))
    out: dict[str, list[tuple[nn.Module, str]]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        out[name] = by_id.get(id(t), [])
    return out


def _sliced(t: torch.Tensor, keeps: dict[int, torch.Tensor]) -> torch.Tensor:
    for dim, keep in sorted(keeps.items()):
        t = t.index_select(dim, keep.to(t.device))
    return t


def _fix_module(m: nn.Module, old: dict[str, tuple[int, ...]]) -> None:
    """Bring a resized layer's attributes in line with its tensors (its 'face')."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        if m.transposed:
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        else:
            old_out = old.get("weight", w.shape)[0]
            if m.groups > 1:
                m.groups = m.groups * w.shape[0] // old_out
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = w if w is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.GroupNorm):
        old_c = old.get("weight", (m.num_channels,))[0]
        m.num_groups = m.num_groups * w.shape[0] // old_c
        m.num_channels = w.shape[0]
    elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
        m.normalized_shape = (w.shape[0],)
    elif isinstance(m, nn.Embedding):
        m.embedding_dim = w.shape[1]
    elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # transformers.pytorch_utils.Conv1D
        m.nx, m.nf = w.shape
    elif hasattr(m, "normalized_shape") and w is not None and w.dim() == 1:
        m.normalized_shape = (w.shape[0],)


def _fix_heads(g: Group, n_old: int, n_new: int, modules: dict[str, nn.Module]) -> None:
    """Attention modules read their head count / width from attributes: scale those that match."""
    if n_new == n_old:
        return
    for name in g.heads:
        m = modules.get(name)
        if m is None:
            continue
        for attr in HEAD_ATTRS + WIDTH_ATTRS:
            v = getattr(m, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v % n_old == 0:
                setattr(m, attr, v // n_old * n_new)


def apply_channel_pruning(model: nn.Module, groups: Sequence[Group], keep: dict[str, Sequence[int]]) -> None:
    """Remove every unit not in `keep[group.root]` from the groups named in `keep`.

    All groups are cut against the original numbering in one pass (tensors sliced once). The
    index bookkeeping is on the CPU whatever the model's device, so `load()` can replay this on a
    model built on the meta device (shapes only, see `condense.artifacts`)."""
    by_root = {g.root: g for g in groups}
    alive: dict[tuple[str, int], torch.Tensor] = {}
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    resized: list[tuple[Group, int, int]] = []
    for root, kept in keep.items():
        g = by_root.get(root)
        if g is None or not g.prunable:
            raise ConfigError(f"channel pruning: {root!r} is not the root of a prunable group")
        kept_t = torch.as_tensor(sorted(set(int(k) for k in kept)), dtype=torch.long, device="cpu")
        if len(kept_t) == 0 or kept_t.min() < 0 or kept_t.max() >= g.size:
            raise ConfigError(f"channel pruning: group {root!r} ({g.size} channels) gets invalid kept indices")
        removed = torch.ones(g.size, dtype=torch.bool, device="cpu")
        removed[kept_t] = False
        gone = removed.nonzero().flatten()
        for mem in g.members:
            key = (mem.param, mem.dim)
            if key not in alive:
                alive[key] = torch.ones(tensors[mem.param].shape[mem.dim], dtype=torch.bool, device="cpu")
            for j in range(mem.expand):
                alive[key][mem.offset + gone * mem.expand + j] = False
        resized.append((g, g.size, len(kept_t)))
    holders = _holders(model)
    per_tensor: dict[str, dict[int, torch.Tensor]] = {}
    for (param, dim), mask in alive.items():
        per_tensor.setdefault(param, {})[dim] = mask.nonzero().flatten()
    old_shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    with torch.no_grad():
        for name, keeps in per_tensor.items():
            old = tensors[name]
            new = _sliced(old.detach(), keeps).clone().contiguous()
            value = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
            for owner, attr in holders[name]:
                old_shapes.setdefault(id(owner), {})[attr] = tuple(old.shape)
                if isinstance(old, nn.Parameter):
                    owner._parameters[attr] = value
                else:
                    owner._buffers[attr] = value
    modules = dict(model.named_modules())
    for m in modules.values():
        if id(m) in old_shapes:
            _fix_module(m, old_shapes[id(m)])
    for g, n_old, n_new in resized:
        _fix_heads(g, n_old, n_new, modules)


def _values(example_inputs: Any) -> list[torch.Tensor]:
    return list(example_inputs.values()) if isinstance(example_inputs, dict) else list(example_inputs)


def input_shapes(example_inputs: Any) -> list[list[int]]:
    return [[int(d) for d in x.shape] for x in _values(example_inputs)]


def input_dtypes(example_inputs: Any) -> list[str]:
    return [str(x.dtype).replace("torch.", "") for x in _values(example_inputs)]


def example_record(example_inputs: Any) -> dict[str, Any]:
    """What replay needs to rebuild an example of the same shapes (names for a batch dict)."""
    out: dict[str, Any] = {"input_shapes": input_shapes(example_inputs), "input_dtypes": input_dtypes(example_inputs)}
    if isinstance(example_inputs, dict):
        out["input_names"] = list(example_inputs)
    return out


def prune_and_record(
    model: nn.Module, groups: Sequence[Group], keep: dict[str, list[int]], example_inputs: tuple[torch.Tensor, ...]
) -> None:
    """Cut the channels, then append the `prune_channels` edit (roots, sizes, kept indices)."""
    by_root = {g.root: g for g in groups}
    keep = {r: sorted(set(int(i) for i in k)) for r, k in keep.items() if len(set(k)) < by_root[r].size}
    if not keep:
        return
    apply_channel_pruning(model, groups, keep)
    config = patch_hf_config(model, groups, keep)
    record_edit(
        model, "prune_channels", **example_record(example_inputs),
        groups=[{"root": r, "size": by_root[r].size, "keep": k} for r, k in keep.items()],
        **({"config": config} if config else {}),
    )


def _replay(
    model: nn.Module, input_shapes: list[list[int]], groups: list[dict[str, Any]], input_dtypes: list[str] | None = None,
    input_names: list[str] | None = None, config: dict[str, int] | None = None,
) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtypes = [getattr(torch, d) for d in input_dtypes] if input_dtypes else [torch.float32] * len(input_shapes)
    # integer inputs (token ids, masks) as ones: valid ids, an all-visible mask; floats as zeros
    values = [torch.ones(*s, device=device, dtype=dt) if not dt.is_floating_point else torch.zeros(*s, device=device, dtype=dt)
              for s, dt in zip(input_shapes, dtypes, strict=True)]
    inputs: Any = dict(zip(input_names, values, strict=True)) if input_names else tuple(values)
    found = {g.root: g for g in dependency_groups(model, inputs)}
    built_cut = bool(config) and config_describes(model, config)  # built from the patched config.json
    todo = []
    for rec in groups:
        g = found.get(rec["root"])
        if built_cut and g is not None and g.size == len(rec["keep"]) != rec["size"]:
            continue  # this model was built already cut (see prune.hfconfig)
        todo.append(rec)
        if g is None or g.size != rec["size"]:
            have = f"{g.size} channels" if g is not None else "no such group"
            raise ConfigError(
                f"prune_channels replay: group {rec['root']!r} should have {rec['size']} channels, the model has {have} "
                "(is this the architecture the edit was recorded on?)"
            )
    keep = {r["root"]: r["keep"] for r in todo}
    apply_channel_pruning(model, list(found.values()), keep)
    patch_hf_config(model, list(found.values()), keep)


EDITS.register("prune_channels", _replay)
