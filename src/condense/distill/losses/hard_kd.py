"""Hard-label distillation: cross-entropy of the student against the teacher's top-1 class.

The "hard target" variant discussed alongside soft targets in Hinton, Vinyals & Dean 2015
(arXiv:1503.02531), and used as the distillation token target in DeiT (Touvron et al. 2021,
"Training data-efficient image transformers & distillation through attention", ICML):

    L = CE(s, argmax_c t_c) = -mean_i log softmax(s_i)[argmax t_i]
"""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import DistillLoss, LossInputs, rows


def hard_kd_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy of `student_logits` against `teacher_logits.argmax(-1)` (or of probs)."""
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"hard_kd: student logits {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} differ"
        )
    s, t = rows(student_logits), rows(teacher_logits)
    return F.cross_entropy(s, t.argmax(dim=-1))


class HardKDLoss(DistillLoss):
    """CE against the teacher's argmax (from `teacher_probs` when given, else teacher logits)."""

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return hard_kd_loss(student_logits, teacher_logits)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        s = self._student_logits(inp)
        t = inp.teacher_probs if inp.teacher_probs is not None else self._teacher_logits(inp)
        return self(s, t)
