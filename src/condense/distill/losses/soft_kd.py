"""Soft-target knowledge distillation (Hinton, Vinyals & Dean 2015).

G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014
Deep Learning Workshop, arXiv:1503.02531.

    L = T^2 * KL( softmax(t / T) || softmax(s / T) ),   averaged over the batch ("batchmean").

The gradient of the KL term w.r.t. a student logit is (1/T) (softmax(s/T) - softmax(t/T)), which
shrinks like 1/T^2 for large T; the T^2 factor keeps the soft term's gradient on the same scale
as the hard-label term when mixing them (the paper's section 2).

That argument is about SGD. Adam(W) normalises each step, so a constant factor on the loss
changes nothing by itself: T^2 only sets the soft term's weight against CE (alpha 0.9, T 4:
14.4 against 0.1), and because the loss sees the student only through `s / T`, the softened
outputs still move about T times less per step than under CE at the same learning rate (hence
distillation's higher default lr, `condense.distill.config.DISTILL_TRAIN`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import DistillLoss, LossInputs, check_positive, rows


def soft_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, batch mean. Extra leading dims count as rows."""
    _same_shape(student_logits, teacher_logits, "teacher_logits")
    s, t = rows(student_logits), rows(teacher_logits)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_kd_from_probs(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 4.0) -> Tensor:
    """`T^2 * KL(p || softmax(s/T))` against a given target distribution `p` (rows sum to 1).

    `p` is used as given: it should already be softened at the same temperature, e.g. the average
    over teachers of `softmax(t_k / T)` (`average_teacher_probs`). Zero probabilities are fine
    (0 log 0 = 0).
    """
    _same_shape(student_logits, teacher_probs, "teacher_probs")
    s, p = rows(student_logits), rows(teacher_probs)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    kl = F.kl_div(log_p_s, p, reduction="batchmean")
    return kl * temperature**2


def average_teacher_probs(
    teacher_logits: Sequence[Tensor], temperature: float = 4.0, weights: Sequence[float] | None = None
) -> Tensor:
    """Multi-teacher soft target: `sum_k w_k softmax(t_k / T)` with weights summing to 1."""
    if not teacher_logits:
        raise ConfigError("average_teacher_probs: no teacher logits given")
    check_positive(temperature, "temperature")
    n = len(teacher_logits)
    w = [1.0 / n] * n if weights is None else [float(x) for x in weights]
    if len(w) != n or any(x < 0 for x in w) or sum(w) <= 0:
        raise ConfigError(f"average_teacher_probs: need {n} non-negative weights, got {weights!r}")
    shape = teacher_logits[0].shape
    if any(t.shape != shape for t in teacher_logits):
        raise ConfigError(
            f"average_teacher_probs: teachers disagree on shape: {[tuple(t.shape) for t in teacher_logits]}"
        )
    total = sum(w)
    probs = [
        F.softmax(rows(t) / temperature, dim=-1) * (wk / total)
        for t, wk in zip(teacher_logits, w, strict=True)
    ]
    out = torch.stack(probs).sum(0)
    return out.reshape(shape)


def _same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ConfigError(
            f"soft_kd: student logits {tuple(student.shape)} and {what} {tuple(teacher.shape)} differ "
            "(student and teacher must predict the same classes)"
        )


class SoftKDLoss(DistillLoss):
    """Hinton soft-target KD; uses `teacher_probs` when the inputs carry them, else teacher logits."""

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "soft_kd.temperature")

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None = None, teacher_probs: Tensor | None = None
    ) -> Tensor:
        if teacher_probs is not None:
            return soft_kd_from_probs(student_logits, teacher_probs, self.temperature)
        if teacher_logits is None:
            raise ConfigError("soft_kd: needs teacher logits or teacher probabilities")
        return soft_kd_loss(student_logits, teacher_logits, self.temperature)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        s = self._student_logits(inp)
        if inp.teacher_probs is not None:
            return self(s, teacher_probs=inp.teacher_probs)
        return self(s, self._teacher_logits(inp))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
