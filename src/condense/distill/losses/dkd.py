"""Decoupled knowledge distillation (Zhao et al. 2022).

B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation", CVPR 2022,
arXiv:2203.08679. With `p = softmax(z / T)` and target class `y`:

    b = [p_y, 1 - p_y]                                 (binary target / non-target probs)
    p~_i = softmax over i != y of z_i / T              (distribution among non-target classes)
    TCKD = KL(b^t || b^s),   NCKD = KL(p~^t || p~^s)
    L = T^2 * (alpha * TCKD + beta * NCKD),  batch mean; defaults alpha=1, beta=8, T=4

Classic KD decomposes as KL(p^t || p^s) = TCKD + (1 - p^t_y) * NCKD (the paper's eq. 7).
Computed with log-sum-exp over the non-target logits instead of the reference code's
`- 1000 * mask` trick, so it is stable in low precision. The paper's linear warm-up of the loss
over the first epochs is a schedule (a callback on the weight), not part of this function.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import (
    DistillLoss,
    LossInputs,
    check_nonnegative,
    check_positive,
    rows,
)


def _log_parts(z: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Log binary probs `(N, 2)` = [log p_y, log(1 - p_y)] and log non-target probs `(N, C)` (0 at y)."""
    lse_all = torch.logsumexp(z, dim=1, keepdim=True)
    lse_nt = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
    z_y = z.masked_fill(~gt, 0.0).sum(dim=1, keepdim=True)
    log_b = torch.cat([z_y - lse_all, lse_nt - lse_all], dim=1)
    log_nt = (z - lse_nt).masked_fill(gt, 0.0)
    return log_b, log_nt


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """`(TCKD, NCKD)`, each batch-mean KL times T^2 (unweighted)."""
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"dkd: student logits {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} differ"
        )
    s, t = rows(student_logits) / temperature, rows(teacher_logits) / temperature
    if s.shape[1] < 2:
        raise ConfigError("dkd: needs at least 2 classes")
    y = targets.reshape(-1).long()
    if y.shape[0] != s.shape[0]:
        raise ConfigError(f"dkd: {y.shape[0]} targets for {s.shape[0]} logit rows")
    gt = F.one_hot(y, s.shape[1]).bool()
    log_b_s, log_nt_s = _log_parts(s, gt)
    log_b_t, log_nt_t = _log_parts(t, gt)
    n = s.shape[0]
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum() / n
    p_nt_t = log_nt_t.exp().masked_fill(gt, 0.0)
    nckd = (p_nt_t * (log_nt_t - log_nt_s)).sum() / n
    scale = temperature**2
    return tckd * scale, nckd * scale


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """`alpha * TCKD + beta * NCKD` (both already scaled by T^2)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd


class DKDLoss(DistillLoss):
    """Decoupled KD; needs teacher logits and ground-truth targets."""

    needs: ClassVar[frozenset[str]] = frozenset({"logits", "targets"})

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha = check_nonnegative(alpha, "dkd.alpha")
        self.beta = check_nonnegative(beta, "dkd.beta")
        self.temperature = check_positive(temperature, "dkd.temperature")

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
        return dkd_loss(student_logits, teacher_logits, targets, self.alpha, self.beta, self.temperature)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(self._student_logits(inp), self._teacher_logits(inp), self._targets(inp))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}"
