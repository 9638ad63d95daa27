"""Defaults that follow from the teacher: what a distillation config means when it does not say.

A sentence encoder (an `hf:` model whose output is a pooled embedding, or its hidden states)
has no class scores, so the logit losses (`soft_kd`, ...) cannot apply: unless the config names
its losses, it is distilled with the cosine embedding loss alone (Reimers & Gurevych 2020; no
labels are read). Every Hugging Face teacher (an encoder or a fine-tuned classifier, whose
student is a transformer built from its layers) sets a transformer's learning rate (1e-4 unless
`train.lr` is set: the 1e-2 that suits a small CNN student wrecks a pretrained BERT's weights in
a few steps) and keeps 10 epochs unless `train.epochs` is set (`DistillConfig`'s 20 were measured
on CNN students, benchmarks/distill_defaults.py, not on transformers). Other classifier teachers
keep `DistillConfig`'s own defaults.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from condense.models.hf import HFModel, is_encoder

#: AdamW learning rate for distilling a pretrained transformer (DistilBERT, sentence-transformers)
TRANSFORMER_LR = 1e-4
#: epochs for distilling a Hugging Face teacher (the length these runs had before issue 23)
TRANSFORMER_EPOCHS = 10


def teacher_defaults(raw: dict[str, Any], teacher: nn.Module) -> dict[str, Any]:
    """`raw` (a DistillConfig mapping) with the losses an encoder teacher needs and a
    transformer's learning rate and length for any Hugging Face teacher, where unset."""
    if not isinstance(teacher, HFModel):
        return raw
    out = dict(raw)
    if is_encoder(teacher):
        out.setdefault("losses", [{"name": "embedding", "kind": "cosine"}])
    train = dict(out.get("train") or {})
    train.setdefault("lr", TRANSFORMER_LR)
    train.setdefault("epochs", TRANSFORMER_EPOCHS)
    out["train"] = train
    return out


__all__ = ["is_encoder", "teacher_defaults"]
