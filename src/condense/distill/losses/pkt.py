"""Probabilistic knowledge transfer (Passalis & Tefas 2018).

N. Passalis, A. Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
ECCV 2018, arXiv:1803.10837. Features are flattened to `(B, D)`; dims may differ.

Cosine-similarity kernel, shifted to [0, 1] and normalised per row into conditional
probabilities:
    K_ij = (cos(x_i, x_j) + 1) / 2,    p_{j|i} = K_ij / sum_k K_ik
    L = mean_{i,j} p^t_{j|i} * log( (p^t_{j|i} + eps) / (p^s_{j|i} + eps) )

(the authors' reference code: the diagonal is kept, and the sum is averaged over all B x B
entries). It is exactly zero for identical features.
"""
from __future__ import annotations

import torch
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import FeatureLoss, LossInputs, check_positive


def _conditional_probs(x: Tensor, eps: float) -> Tensor:
    x = x.reshape(x.shape[0], -1)
    x = x if x.dtype == torch.float64 else x.float()
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student_feature: Tensor, teacher_feature: Tensor, eps: float = 1e-7) -> Tensor:
    """KL between the teacher's and the student's cosine-kernel conditional probabilities."""
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ConfigError(
            f"pkt: student batch {student_feature.shape[0]} != teacher batch {teacher_feature.shape[0]}"
        )
    p_s = _conditional_probs(student_feature, eps)
    p_t = _conditional_probs(teacher_feature, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKTLoss(FeatureLoss):
    """PKT between two named features."""

    def __init__(self, student_layer: str, teacher_layer: str, eps: float = 1e-7) -> None:
        super().__init__(student_layer, teacher_layer)
        self.eps = check_positive(eps, "pkt.eps")

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return pkt_loss(student_feature, teacher_feature, self.eps)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(*self._features(inp))
