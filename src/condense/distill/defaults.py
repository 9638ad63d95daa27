"""Defaults that follow from the teacher: what a distillation config means when it does not say.

A sentence encoder (an `hf:` model whose output is a pooled embedding) has no class scores, so
the logit losses (`soft_kd`, ...) cannot apply: unless the config names its losses, it is
distilled with the cosine embedding loss alone (Reimers & Gurevych 2020; no labels are read); an
encoder whose output is per-token hidden states gets `token_states` (below). Every Hugging Face teacher (an encoder or a fine-tuned classifier, whose
student is a transformer built from its layers) sets a transformer's learning rate (1e-4 unless
`train.lr` is set: the 1e-2 that suits a small CNN student wrecks a pretrained BERT's weights in
a few steps) and keeps 10 epochs unless `train.epochs` is set (`DistillConfig`'s step-floored
default length was measured on CNN students, benchmarks/distill_defaults.py, not on transformers). Other classifier teachers
keep `DistillConfig`'s own defaults.

Defaults by output kind (`output_kind`, `default_losses`): when a `DistillConfig` names no
`losses`, `distill()` runs the teacher once on the first batch and picks the losses from the shape
of its output against the batch: class logits `(B, C)` -> soft-KD + CE (the alpha / temperature
mix); a pooled embedding `(B, H)` of an `hf:` encoder -> the cosine embedding loss; per-token
hidden states `(B, T, H)` -> `token_states` (masked cosine, a projection when the widths differ);
next-token logits `(B, T, V)` (V = the model's `config.vocab_size`) -> `token_kd` at the config's
temperature, plus CE only when the data carries one target per token. The pick is recorded in the
run's result (`FitResult.to_dict()["distill_defaults"]`).
"""
from __future__ import annotations

from typing import Any

import torch
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
    if getattr(teacher, "task", None) == "sentence-embedding":  # per-token encoders: `default_losses`
        out.setdefault("losses", [{"name": "embedding", "kind": "cosine"}])
    train = dict(out.get("train") or {})
    train.setdefault("lr", TRANSFORMER_LR)
    train.setdefault("epochs", TRANSFORMER_EPOCHS)
    out["train"] = train
    return out


#: what `output_kind` can say
OUTPUT_KINDS = ("class_logits", "embedding", "token_states", "token_logits", "other")


def vocab_size(model: nn.Module) -> int | None:
    """The vocabulary size of the first (sub)module with a Hugging Face-style `config.vocab_size`."""
    for m in model.modules():
        v = getattr(getattr(m, "config", None), "vocab_size", None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def output_kind(model: nn.Module, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> str:
    """What `out` (the model's output on `batch`) is: one of `OUTPUT_KINDS`.

    `(B, C)`: "embedding" for an `hf:` encoder, else "class_logits"; `(B, T, X)` on a token batch
    (`input_ids` of length T): "token_states" for an `hf:` encoder (task "encoder"), "token_logits"
    for task "causal-lm" or when X is the model's `config.vocab_size` (a causal LM's head), else
    "token_states"; anything
    else "other" (distilled like class logits, as before).
    """
    task = getattr(model, "task", None)
    if out.dim() == 2:
        return "embedding" if is_encoder(model) else "class_logits"
    ids = batch.get("input_ids")
    if out.dim() == 3 and ids is not None and ids.dim() == 2 and tuple(out.shape[:2]) == tuple(ids.shape):
        if task == "encoder":
            return "token_states"
        if task == "causal-lm":  # an hf: causal LM wrapper: next-token logits by construction
            return "token_logits"
        return "token_logits" if out.shape[-1] == vocab_size(model) else "token_states"
    return "other"


def _shape(out: torch.Tensor) -> str:
    """`(B, T, 768)`: the output's shape with the batch and token dims named."""
    mid = ["T"] if out.dim() == 3 else [str(d) for d in out.shape[1:-1]]
    return "(" + ", ".join(["B", *mid, str(out.shape[-1])]) + ")"


def default_losses(kind: str, config: Any, out: torch.Tensor, batch: dict[str, torch.Tensor]
                   ) -> tuple[list[dict[str, Any]], str]:
    """(loss specs, why) for a `DistillConfig` without `losses` whose teacher's output is `kind`."""
    target = batch.get("target")
    if kind == "embedding":
        return [{"name": "embedding", "kind": "cosine"}], \
            f"pooled embedding {_shape(out)}: cosine embedding loss (labels, if any, unused)"
    if kind == "token_states":
        return [{"name": "token_states", "kind": "cosine"}], \
            f"per-token hidden states {_shape(out)}: masked cosine on the states (labels, if any, unused)"
    if kind == "token_logits":
        specs = [{"name": "token_kd", "temperature": config.temperature, "weight": config.alpha}]
        per_token = target is not None and tuple(target.shape) == tuple(out.shape[:2])
        if per_token and config.alpha < 1.0:
            specs.append({"name": "ce", "weight": 1.0 - config.alpha})
            why = "and CE on the data's per-token targets"
        else:
            specs[0]["weight"] = 1.0
            why = "label-free (the data has no per-token targets)" if not per_token else "label-free (alpha 1)"
        return specs, f"next-token logits {_shape(out)}: token-level KL at T={config.temperature:g}, {why}"
    return config.loss_specs(), f"class logits {_shape(out)}: soft-KD + CE (alpha, temperature)"


__all__ = ["OUTPUT_KINDS", "default_losses", "is_encoder", "output_kind", "teacher_defaults", "vocab_size"]
