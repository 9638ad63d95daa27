"""Token-level knowledge distillation for next-token logits (decoders, causal LMs).

G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531
(the softened KL at temperature T and its T^2 factor), applied at every position of a sequence as
in the word-level KD of Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016,
arXiv:1606.07947 (eq. 2: the per-token cross-entropy against the teacher's distribution, which
differs from this KL by the teacher's entropy, a constant):

    L = T^2 * sum_{b,t} m_bt KL( softmax(z^T_bt / T) || softmax(z^S_bt / T) ) / sum_{b,t} m_bt

`z` are `(B, T, V)` logits over the vocabulary; `m` is the batch's `attention_mask` (1 = real
token), so padding positions count for nothing and the loss does not depend on how a batch was
padded (no mask: every position counts). Student and teacher must share the vocabulary (same V);
a longer cached teacher is cut to the student's length. Label-free.
"""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from condense.core.errors import ConfigError
from condense.distill.losses.base import (
    DistillLoss,
    LossInputs,
    check_positive,
    crop_tokens,
    token_mask,
)


def token_kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                  temperature: float = 2.0) -> Tensor:
    """Masked per-token `T^2 KL(softmax(t/T) || softmax(s/T))`, the mean over real tokens."""
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ConfigError(f"token_kd: expects next-token logits (B, T, V) from student and teacher, got student "
                          f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}")
    teacher_logits = crop_tokens(teacher_logits, student_logits.shape[1])
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"token_kd: student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ (student and teacher must share the vocabulary)")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, T)
    m = token_mask(mask, kl.shape[0], kl.shape[1], kl.device)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * temperature**2


class TokenKDLoss(DistillLoss):
    """Per-token soft-target KD on next-token logits, padding masked; label-free."""

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    expects: ClassVar[str] = "next-token logits (B, T, V) of the same shape from student and teacher"

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "token_kd.temperature")

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        return token_kd_loss(student_logits, teacher_logits, mask, self.temperature)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(self._student_logits(inp), self._teacher_logits(inp), inp.mask)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
