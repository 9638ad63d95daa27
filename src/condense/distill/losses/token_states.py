"""Per-token output distillation: the student's hidden states regress the teacher's, token by token.

The default for a model whose *output* is per-token hidden states `(B, T, H)` (a Hugging Face
`hf:` encoder: BERT, ALBERT, GPT-2 or Llama loaded as AutoModel): there are no class scores to
soften, so the logit losses (`soft_kd`, `ce`) do not apply. It is the TinyBERT hidden-state
term (Jiao et al. 2020, arXiv:1909.10351, eq. 8) on the last layer, the one the model outputs:

    L = mean over real tokens of  || s_t W - t_t ||^2 / H           (kind="mse")
    L = mean over real tokens of  1 - cos(s_t W, t_t)               (kind="cosine", the default)

Positions whose `attention_mask` is 0 (padding) are left out, so the loss does not depend on how a
batch was padded; a longer cached teacher is cut to the student's length. `W` is a learned Linear
(TinyBERT's W_h) used only when the widths differ (`adapter: auto`); it is created lazily from
the first batch and belongs to the task, not to the deployed student. Label-free. For states of
inner layers use `hidden_state` (layer map) instead.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError
from condense.distill.losses.base import LossInputs, crop_tokens, token_mask
from condense.distill.losses.embedding import EmbeddingLoss


def token_states_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None, kind: str = "cosine",
                      projector: nn.Module | None = None) -> Tensor:
    """Masked MSE or (1 - cosine) between `projector(student)` and `teacher`, both `(B, T, H)`."""
    if student.dim() != 3 or teacher.dim() != 3:
        raise ConfigError(f"token_states: expects per-token states (B, T, H) from student and teacher, got student "
                          f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}")
    teacher = crop_tokens(teacher, student.shape[1])
    s = projector(student) if projector is not None else student
    if s.shape != teacher.shape:
        raise ConfigError(f"token_states: student states {tuple(s.shape)} do not match the teacher's "
                          f"{tuple(teacher.shape)}; use adapter: auto for a learned projection")
    m = token_mask(mask, s.shape[0], s.shape[1], s.device)
    s, t = s.float(), teacher.float()
    per_token = (s - t).pow(2).mean(-1) if kind == "mse" else 1.0 - F.cosine_similarity(s, t, dim=-1)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


class TokenStatesLoss(EmbeddingLoss):
    """Regress the teacher's per-token output states, padding masked; label-free.

    `kind`: "cosine" (default) or "mse". `adapter`: "auto" adds a Linear projection only when the
    widths differ, "none" never (the widths must then match).
    """

    loss_name: ClassVar[str] = "token_states"
    expects: ClassVar[str] = "per-token states (B, T, H) from student and teacher (H may differ with adapter: auto)"

    def __init__(self, kind: Literal["mse", "cosine"] = "cosine", adapter: Literal["auto", "none"] = "auto") -> None:
        super().__init__(kind, adapter)  # the embedding loss's options and lazy projection, per token

    def forward(self, student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self._materialized:
            self.build(student, teacher)
        return token_states_loss(student, teacher, mask, self.kind, self.projector)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(self._student_logits(inp), self._teacher_logits(inp), inp.mask)
