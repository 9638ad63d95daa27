"""Embedding distillation: the student's output vector regresses the teacher's.

N. Reimers, I. Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
Distillation", EMNLP 2020, arXiv:2004.09813: a student sentence encoder is trained with

    L = mean_i || s_i - t_i ||^2            (kind="mse", the paper's loss; element mean here)

on the teacher's sentence embeddings, which needs no labels. `kind="cosine"` uses
`mean_i (1 - cos(s_i, t_i))` instead, which ignores the norm (embeddings that are L2-normalised
at the output, as all-MiniLM's are, differ only in direction anyway).

The model *outputs* are compared (for a sentence encoder: its pooled embedding; for a
classifier: its logits, as plain regression, Ba & Caruana 2014). When the widths differ (a
narrower student), a learned linear projection maps the student's vector to the teacher's
width (TinyBERT's W_h, Jiao et al. 2020); it is created lazily from the first batch and belongs
to the task, not to the deployed student.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condense.core.errors import ConfigError, did_you_mean
from condense.distill.losses.base import DistillLoss, LossInputs

_KINDS = ("mse", "cosine")


def embedding_loss(student: Tensor, teacher: Tensor, kind: str = "mse", projector: nn.Module | None = None) -> Tensor:
    """MSE or (1 - cosine) between `projector(student)` and `teacher`, both `(B, D)` (or `(B, ..., D)`)."""
    s = projector(student) if projector is not None else student
    if s.shape != teacher.shape:
        raise ConfigError(f"embedding: student output {tuple(s.shape)} does not match the teacher's "
                          f"{tuple(teacher.shape)}; use adapter: auto for a learned projection")
    s, t = s.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


class EmbeddingLoss(DistillLoss):
    """Regress the teacher's output vector (sentence embedding); label-free.

    `kind`: "mse" or "cosine". `adapter`: "auto" adds a Linear projection only when the widths
    differ, "none" never (the widths must then match).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    compares_classes: ClassVar[bool] = False
    loss_name: ClassVar[str] = "embedding"  # in error messages (subclasses: token_states)

    def __init__(self, kind: Literal["mse", "cosine"] = "mse", adapter: Literal["auto", "none"] = "auto") -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ConfigError(f"{self.loss_name}.kind must be one of {', '.join(_KINDS)}, got {kind!r}"
                              f"{did_you_mean(str(kind), _KINDS)}")
        if adapter not in ("auto", "none"):
            raise ConfigError(f"{self.loss_name}.adapter must be 'auto' or 'none', got {adapter!r}")
        self.kind, self.adapter = kind, adapter
        self.projector: nn.Module | None = None
        self._materialized = False

    def build(self, student: Tensor, teacher: Tensor) -> None:
        if self._materialized:
            return
        if self.adapter == "auto" and student.shape[-1] != teacher.shape[-1]:
            dtype = student.dtype if student.dtype in (torch.float32, torch.float64) else None
            self.projector = nn.Linear(student.shape[-1], teacher.shape[-1], bias=False).to(student.device, dtype)
        self._materialized = True

    def materialize(self, inp: LossInputs) -> None:
        self.build(self._student_logits(inp), self._teacher_logits(inp))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if not self._materialized:
            self.build(student, teacher)
        return embedding_loss(student, teacher, self.kind, self.projector)

    def forward_inputs(self, inp: LossInputs) -> Tensor:
        return self(self._student_logits(inp), self._teacher_logits(inp))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, adapter={self.adapter!r}"
