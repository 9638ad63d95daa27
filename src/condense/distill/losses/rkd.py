"""Relational knowledge distillation (Park et al. 2019).

W. Park, D. Kim, Y. Lu, M. Cho, "Relational Knowledge Distillation", CVPR 2019,
arXiv:1904.05068. Embeddings are flattened to `(B, D)`; student and teacher dims may differ.

Distance-wise: `psi_D(i, j) = ||e_i - e_j||_2 / mu`, `mu` the mean over pairs i != j;
    L_D = mean_{i,j} smooth_l1(psi_D^s(i, j), psi_D^t(i, j))       (B x B entries, diagonal 0)
Angle-wise: `psi_A(i, j, k) = <(e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j||>`;
    L_A = mean_{i,j,k} smooth_l1(psi_A^s, psi_A^t)                 (B x B x B entries)
    L = w_dist * L_D + w_angle * L_A,   w_dist = 25, w_angle = 50 (the paper's weights)

Both terms are invariant to a uniform scaling of either embedding. Follows the authors'
reference code (github.com/lenscloth/RKD), including its averaging over all entries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import FeatureLoss, LossInputs, check_nonnegative


def _flat(e: Tensor) -> Tensor:
    e = e.reshape(e.shape[0], -1)
    return e if e.dtype == torch.float64 else e.float()


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix with an exact zero, gradient-safe, diagonal."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def _normalised_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    n = e.shape[0]
    mean = d.sum() / max(n * (n - 1), 1)
    return d / mean.clamp(min=1e-12)


def _angles(e: Tensor) -> Tensor:
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Distance-wise RKD term (unweighted)."""
    s, t = _flat(student), _flat(teacher)
    _check_batch(s, t)
    with torch.no_grad():
        t_d = _normalised_distances(t)
    return F.smooth_l1_loss(_normalised_distances(s), t_d)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Angle-wise RKD term (unweighted). Memory grows as B^2 * D and B^3."""
    s, t = _flat(student), _flat(teacher)
    _check_batch(s, t)
    with torch.no_grad():
        t_a = _angles(t)
    return F.smooth_l1_loss(_angles(s), t_a)


def rkd_loss(student: Tensor, teacher: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    """`w_dist * L_D + w_angle * L_A`."""
    total = student.new_zeros((), dtype=torch.float32)
    if w_dist:
        total = total + w_dist * rkd_distance_loss(student, teacher)
    if w_angle:
        total = total + w_angle * rkd_angle_loss(student, teacher)
    return total


def _check_batch(s: Tensor, t: Tensor) -> None:
    if s.shape[0] != t.shape[0]:
        raise ConfigError(f"rkd: student batch {s.shape[0]} != teacher batch {t.shape[0]}")
    if s.shape[0] < 2:
        raise ConfigError("rkd: needs at least 2 samples per batch (relations between samples)")


class RKDLoss(FeatureLoss):
    """Relational KD between two named embeddings (teacher side is treated as a constant)."""

    def __init__(
        self, student_layer: str, teacher_layer: str, w_dist: float = 25.0, w_angle: float = 50.0
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.w_dist = check_nonnegative(w_dist, "rkd.w_dist")
        self.w_angle = check_nonnegative(w_angle, "rkd.w_angle")
        if self.w_dist == 0 and self.w_angle == 0:
            raise ConfigError("rkd: w_dist and w_angle are both 0")

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return rkd_loss(student_feature, teacher_feature, self.w_dist, self.w_angle)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(*self._features(inp))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_dist={self.w_dist}, w_angle={self.w_angle}"
