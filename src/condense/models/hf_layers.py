"""Which transformer blocks a BERT-family model keeps: the shallow student of DistilBERT (Sanh et
al. 2019) and sentence-transformers' layer reduction, copied from a teacher's own blocks.

`build_model("hf:<folder>", layers=3)` applies `keep_layers` to a pretrained folder;
`student_from_teacher(teacher, 3)` does it to a model in memory, typically a teacher fine-tuned
on the task, so the student starts from the teacher's task-tuned embeddings, blocks and head.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from condense.core.errors import ConfigError


def encoder_layers(hf: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-family model (`<base>.encoder.layer`)."""
    base = getattr(hf, "base_model", hf)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"hf: {type(hf).__name__} has no BERT-style encoder.layer list; keeping a subset of layers "
                          "supports BERT-family encoders (bert, roberta, xlm-roberta, electra, mpnet, ...)")
    return layers


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


def keep_layers(hf: nn.Module, layers: int | Sequence[int]) -> list[int]:
    """Keep only the transformer blocks `layers` (their weights copied as they are), and say so
    in the config, so `from_pretrained` opens the saved folder. Returns the kept indices."""
    blocks = encoder_layers(hf)
    idx = resolve_layers(layers, len(blocks))
    base = getattr(hf, "base_model", hf)
    base.encoder.layer = nn.ModuleList([blocks[i] for i in idx])
    for new, block in enumerate(base.encoder.layer):  # attention layer indices (KV caches) follow the position
        attn = getattr(getattr(block, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new
    hf.config.num_hidden_layers = len(idx)
    return idx


def student_from_teacher(teacher: nn.Module, layers: int | Sequence[int]) -> Any:
    """A copy of the Hugging Face model `teacher` (a condense `HFModel`, e.g. a BERT fine-tuned on
    the task) keeping only the blocks `layers` (indices into the teacher's blocks, or a count
    spread evenly), with the teacher's embeddings and head. The teacher is not changed.
    `build_kwargs["layers"]` records the kept indices, so a `hidden_state` loss with
    `layer_map: kept` pairs each student block with the teacher block it was copied from."""
    from condense.models.hf import HFModel

    if not isinstance(teacher, HFModel):
        raise ConfigError(f"a student built from its teacher's layers needs a Hugging Face (hf:) teacher, got "
                          f"{type(teacher).__name__}")
    student = copy.deepcopy(teacher)
    student.build_kwargs["layers"] = keep_layers(student.hf, layers)
    return student.train(teacher.training)


__all__ = ["encoder_layers", "keep_layers", "resolve_layers", "student_from_teacher"]
