"""Plain cross-entropy with the ground-truth labels: the hard term of the KD mix.

Hinton, Vinyals & Dean 2015 (arXiv:1503.02531) train on `a * soft_kd + (1 - a) * CE(s, y)`;
label smoothing as in Szegedy et al. 2016, "Rethinking the Inception Architecture" (CVPR):

    L = -mean_i sum_c q_ic log softmax(s_i)_c,   q_i = (1 - eps) onehot(y_i) + eps / C
"""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from condense.distill.losses.base import DistillLoss, LossInputs, check_unit_interval, rows


def ce_loss(student_logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of `(B, ..., C)` logits against `(B, ...)` class indices (-100 ignored)."""
    return F.cross_entropy(
        rows(student_logits), targets.reshape(-1), label_smoothing=label_smoothing
    )


class CELoss(DistillLoss):
    """Cross-entropy with labels; reads only the student's logits and the targets."""

    needs: ClassVar[frozenset[str]] = frozenset({"targets"})

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_unit_interval(label_smoothing, "ce.label_smoothing")

    def forward(self, student_logits: Tensor, targets: Tensor) -> Tensor:
        return ce_loss(student_logits, targets, self.label_smoothing)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(self._student_logits(inp), self._targets(inp))

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
