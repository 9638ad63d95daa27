"""Distillation losses: one file each, a pure function plus a thin `nn.Module` wrapper.

Every module follows one call convention so a task can combine them (`CombinedLoss`):
`forward_inputs(LossInputs) -> scalar`, a class attribute `needs` (subset of "logits",
"features", "targets", "index"), `feature_layers()` naming the module outputs to tap, and a
`materialize(LossInputs)` hook that creates lazily-shaped parameters (call it before building
the optimizer), and `bind(student, teacher)` for losses that find their layers in the models
(`hidden_state`, `minilm`: transformer layers by index). Registration is by the explicit imports below.
"""
from __future__ import annotations

from condense.distill.losses.attention import AttentionLoss, attention_loss, attention_map
from condense.distill.losses.base import LOSSES, NEEDS, DistillLoss, FeatureLoss, LossInputs
from condense.distill.losses.ce import CELoss, ce_loss
from condense.distill.losses.combined import CombinedLoss, build_losses
from condense.distill.losses.crd import CRDLoss, crd_info_nce
from condense.distill.losses.dkd import DKDLoss, dkd_loss, dkd_parts
from condense.distill.losses.embedding import EmbeddingLoss, embedding_loss
from condense.distill.losses.fitnet import FitNetLoss, fitnet_loss
from condense.distill.losses.hard_kd import HardKDLoss, hard_kd_loss
from condense.distill.losses.hidden_state import (
    HiddenStateLoss,
    hidden_state_loss,
    masked_mse,
    uniform_layer_map,
)
from condense.distill.losses.minilm import MiniLMLoss, minilm_loss, relation_kl, relation_log_probs
from condense.distill.losses.pkt import PKTLoss, pkt_loss
from condense.distill.losses.rkd import RKDLoss, rkd_angle_loss, rkd_distance_loss, rkd_loss
from condense.distill.losses.soft_kd import (
    SoftKDLoss,
    average_teacher_probs,
    soft_kd_from_probs,
    soft_kd_loss,
)
from condense.distill.losses.token_kd import TokenKDLoss, token_kd_loss
from condense.distill.losses.token_states import TokenStatesLoss, token_states_loss

LOSSES.register("soft_kd", SoftKDLoss, help="Hinton soft-target KD: T^2 KL(teacher || student) at temperature T")
LOSSES.register("hard_kd", HardKDLoss, help="cross-entropy against the teacher's argmax")
LOSSES.register("ce", CELoss, help="cross-entropy against ground-truth labels")
LOSSES.register("fitnet", FitNetLoss, help="FitNets hint: MSE(projector(student feature), teacher feature)")
LOSSES.register("attention", AttentionLoss, help="attention transfer on spatial attention maps")
LOSSES.register("rkd", RKDLoss, help="relational KD: distance- and angle-wise structure")
LOSSES.register("pkt", PKTLoss, help="probabilistic knowledge transfer: KL of cosine-kernel probabilities")
LOSSES.register("crd", CRDLoss, help="contrastive representation distillation with a memory bank")
LOSSES.register("dkd", DKDLoss, help="decoupled KD: alpha * TCKD + beta * NCKD")
LOSSES.register("embedding", EmbeddingLoss, help="regress the teacher's output vector (sentence embedding): MSE or cosine")
LOSSES.register("hidden_state", HiddenStateLoss,
                help="TinyBERT: masked MSE between mapped transformer layers' hidden states (+ learned projection)")
LOSSES.register("minilm", MiniLMLoss,
                help="MiniLM: KL of last-layer self-attention and value relations (v2 relation heads)")
LOSSES.register("token_states", TokenStatesLoss,
                help="per-token output states (B, T, H): masked cosine or MSE (+ learned projection)")
LOSSES.register("token_kd", TokenKDLoss,
                help="token-level KD on next-token logits (B, T, V): masked T^2 KL at temperature T")

__all__ = [
    "LOSSES",
    "NEEDS",
    "AttentionLoss",
    "CELoss",
    "CRDLoss",
    "CombinedLoss",
    "DKDLoss",
    "DistillLoss",
    "EmbeddingLoss",
    "FeatureLoss",
    "FitNetLoss",
    "HardKDLoss",
    "HiddenStateLoss",
    "LossInputs",
    "MiniLMLoss",
    "PKTLoss",
    "RKDLoss",
    "SoftKDLoss",
    "TokenKDLoss",
    "TokenStatesLoss",
    "attention_loss",
    "attention_map",
    "average_teacher_probs",
    "build_losses",
    "ce_loss",
    "crd_info_nce",
    "dkd_loss",
    "dkd_parts",
    "embedding_loss",
    "fitnet_loss",
    "hard_kd_loss",
    "hidden_state_loss",
    "masked_mse",
    "minilm_loss",
    "pkt_loss",
    "relation_kl",
    "relation_log_probs",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "soft_kd_from_probs",
    "soft_kd_loss",
    "token_kd_loss",
    "token_states_loss",
    "uniform_layer_map",
]
