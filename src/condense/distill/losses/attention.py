"""Attention transfer (Zagoruyko & Komodakis 2017).

S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928.

Spatial attention map of a `(B, C, H, W)` feature: `Q = mean_c |f_c|^p` (p = 2), flattened to
`(B, H*W)` and L2-normalised, `a = Q / ||Q||_2`. The loss is the reference code's

    L = mean_{b, j} (a_s[b, j] - a_t[b, j])^2

(the paper writes `beta/2 * sum ||a_s - a_t||_p`, with beta = 1e3 folded into the weight; the
paper's own code uses this squared-difference mean). Channel counts may differ: the map averages
channels away. When the spatial sizes differ the larger `Q` map is adaptive-average-pooled to
the smaller size before normalisation. `(B, N, D)` token features are accepted too: the map is
`mean_d |f_d|^p` over the N tokens (N must match).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import FeatureLoss, LossInputs, check_positive


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Unnormalised attention `mean over channels of |f|^p`: `(B,C,H,W)->(B,H,W)`, `(B,N,D)->(B,N)`."""
    f = feature.float()
    if f.dim() == 4:
        return f.abs().pow(p).mean(dim=1)
    if f.dim() == 3:
        return f.abs().pow(p).mean(dim=2)
    raise ConfigError(
        f"attention: features must be (B, C, H, W) maps or (B, N, D) tokens, got {tuple(feature.shape)}"
    )


def attention_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Mean squared difference of the L2-normalised spatial attention maps."""
    qs, qt = attention_map(student_feature, p), attention_map(teacher_feature, p)
    if qs.dim() != qt.dim() or qs.shape[0] != qt.shape[0]:
        raise ConfigError(
            f"attention: student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} are not comparable"
        )
    if qs.shape != qt.shape:
        if qs.dim() == 2:
            raise ConfigError(
                f"attention: token counts differ ({qs.shape[1]} vs {qt.shape[1]})"
            )
        size = (min(qs.shape[1], qt.shape[1]), min(qs.shape[2], qt.shape[2]))
        qs = F.adaptive_avg_pool2d(qs.unsqueeze(1), size).squeeze(1)
        qt = F.adaptive_avg_pool2d(qt.unsqueeze(1), size).squeeze(1)
    a_s = F.normalize(qs.flatten(1), p=2, dim=1)
    a_t = F.normalize(qt.flatten(1), p=2, dim=1)
    return (a_s - a_t).pow(2).mean()


class AttentionLoss(FeatureLoss):
    """Attention transfer between two named features; no adapter needed."""

    def __init__(self, student_layer: str, teacher_layer: str, p: float = 2.0) -> None:
        super().__init__(student_layer, teacher_layer)
        self.p = check_positive(p, "attention.p")

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return attention_loss(student_feature, teacher_feature, self.p)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(*self._features(inp))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"
